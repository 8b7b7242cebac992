"""Ground-truth labels for scoring beyond agreement with the teacher LLM.

A labels file is JSON lines, one per labelled call, keyed by the record id:

* tool calls, in BFCL's possible-answer form (several acceptable values per argument, ``""`` = may be left out):
  ``{"record_id": "r1", "tool_calls": [{"name": "area", "arguments": {"base": [3, 3.0], "unit": ["cm", ""]}}]}``
* text or JSON answers: ``{"record_id": "r2", "content": "Paris"}``

Records without a label are simply not part of the ground-truth scores; the number labelled is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from components.core.schema import CallRecord, ChatMessage
from components.scoring.metrics import score_pairs
from components.scoring.tool_calls import ExpectedCall, score_tool_calls

GroundTruth = dict[str, list[ExpectedCall] | ChatMessage]


def read_ground_truth(path: Path) -> GroundTruth:
    """The labels by record id; a malformed line is an error naming its line number."""
    labels: GroundTruth = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            record_id = str(item["record_id"])
            if "tool_calls" in item:
                labels[record_id] = [
                    (str(c["name"]), {k: list(v) for k, v in c.get("arguments", {}).items()})
                    for c in item["tool_calls"]
                ]
            else:
                labels[record_id] = ChatMessage(role="assistant", content=str(item["content"]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}:{number}: not a label line ({type(error).__name__}: {error})") from None
    return labels


def score_against_labels(
    predicted: list[ChatMessage], records: list[CallRecord], output_kind: str, labels: GroundTruth | None
) -> dict[str, Any] | None:
    """Mean scores of the labelled records' answers against their labels, with ``n_labelled``; None if none is."""
    if not labels:
        return None
    pairs = [(p, r, labels[r.record_id]) for p, r in zip(predicted, records) if r.record_id in labels]
    if not pairs:
        return None
    if output_kind == "tool_call":
        per_pair = [
            score_tool_calls(p.tool_calls, label if isinstance(label, list) else [], r.tools) for p, r, label in pairs
        ]
        scores = {metric: float(np.mean([s[metric] for s in per_pair])) for metric in per_pair[0]}
    else:
        expected = [label if isinstance(label, ChatMessage) else ChatMessage(role="assistant") for _, _, label in pairs]
        scores = score_pairs(expected, [p for p, _, _ in pairs], output_kind)
    return {**scores, "n_labelled": len(pairs)}
