"""Value recall: does the compact prompt still hold the values the answer needs?

A call's answer passes argument values on (a symbol, a file name, a count). When the value occurs in the full
prompt (the request, an earlier call, a tool result) the model can copy it; when the compact prompt dropped it, no
training makes the answer derivable. *Value recall* is, over a cluster's calls, the share of the answer's values
stated in the full prompt that the compact prompt still states. A value is a string or number leaf of the
answer's arguments, two characters or more, found verbatim as a whole word or phrase (booleans never count).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.core.schema import CallRecord

if TYPE_CHECKING:
    from components.slm.prompt_spec import PromptSpec

MIN_VALUE_CHARS = 2


def leaf_values(value: Any) -> list[str]:
    """The string and number leaves of a JSON value, as the text a prompt would state them in."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if len(value.strip()) >= MIN_VALUE_CHARS else []
    if isinstance(value, int | float):
        text = json.dumps(value)
        return [text] if len(text) >= MIN_VALUE_CHARS else []
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaf_values(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaf_values(item)]
    return []


def call_values(arguments: str) -> list[str]:
    """The values of one tool call's JSON arguments (none when they do not parse)."""
    try:
        return leaf_values(json.loads(arguments or "{}"))
    except json.JSONDecodeError:
        return []


def answer_values(record: CallRecord) -> list[str]:
    """The distinct values the LLM's answer passes on."""
    return list(dict.fromkeys(v for call in record.response.tool_calls for v in call_values(call.arguments)))


def states(text: str, value: str) -> bool:
    """Whether ``text`` states ``value`` verbatim as a whole word or phrase."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


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
    from components.slm.prompt import build_messages

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
