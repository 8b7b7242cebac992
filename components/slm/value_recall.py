"""Value recall: does the compact prompt still hold the values the answer needs?

A call's answer passes argument values on (a symbol, a file name, a count). When the value occurs in the full
prompt (the request, an earlier call, a tool result) the model can copy it; when the compact prompt dropped it, no
training makes the answer derivable. *Value recall* is, over a cluster's calls, the share of the answer's values
stated in the full prompt that the compact prompt still states (the values: components/slm/prompt_values.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.core.schema import CallRecord
from components.slm.prompt import build_messages
from components.slm.prompt_spec import PromptSpec
from components.slm.prompt_values import answer_values, states


def prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(message["content"] for message in messages)


@dataclass
class ValueRecall:
    stated: int = 0  # answer values the full prompt states
    kept: int = 0  # of those, the ones the compact prompt states too
    calls_missing: int = 0  # calls with at least one stated value the compact prompt lost

    @property
    def recall(self) -> float | None:
        return self.kept / self.stated if self.stated else None

    def as_dict(self) -> dict[str, Any]:
        recall = self.recall
        return {
            "stated": self.stated,
            "kept": self.kept,
            "recall": None if recall is None else round(recall, 4),
            "calls_missing": self.calls_missing,
        }


def value_recall(records: list[CallRecord], spec: PromptSpec | None) -> ValueRecall:
    """Of the answer values each call's full prompt states, how many its prompt under ``spec`` still states."""
    tally = ValueRecall()
    for record in records:
        values = answer_values(record)
        if not values:
            continue
        full = prompt_text(build_messages(record))
        compact = prompt_text(build_messages(record, spec))
        stated = [value for value in values if states(full, value)]
        kept = [value for value in stated if states(compact, value)]
        tally.stated += len(stated)
        tally.kept += len(kept)
        tally.calls_missing += len(kept) < len(stated)
    return tally
