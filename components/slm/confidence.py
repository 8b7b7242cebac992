"""How sure the SLM was of an answer, from its own decode: each generated token's log-probability (renormalised over
the tokens the tool grammar allowed at that step) aggregated into a few features.

- ``mean_logprob``, ``min_logprob``: over every generated token, the stop token included;
- ``name_logprob``: the least likely token of the called functions' names (the tool choice);
- ``value_logprob``: per argument value the mean log-probability of its tokens, the least of those over the values.

An answer without a call takes ``min_logprob`` as its name feature; a call without arguments has nothing to doubt
in them (``value_logprob`` 0). S6's calibrator (components/evaluate/selective.py) learns from these what an answer's
chance of matching the LLM's is; :class:`Calibrator` and :class:`SelectiveGate` (below) are that calibrator and the
gate S6 ships, applied to one answer by the router and the SLM server with the same features and formula.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ("mean_logprob", "min_logprob", "name_logprob", "value_logprob")

_CALL_OPEN = re.compile(r"<tool_call>\s*")
_DECODER = json.JSONDecoder()
Span = tuple[int, int]


def _skip(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def object_member_spans(text: str, position: int) -> dict[str, Span]:
    """The character span of each member's value of the JSON object opening at ``position``; a malformed or
    truncated object gives the members read before the fault."""
    spans: dict[str, Span] = {}
    if position >= len(text) or text[position] != "{":
        return spans
    position += 1
    try:
        while True:
            position = _skip(text, position)
            if position >= len(text) or text[position] == "}":
                return spans
            key, position = _DECODER.raw_decode(text, position)
            position = _skip(text, position)
            if text[position] != ":":
                return spans
            start = _skip(text, position + 1)
            _, end = _DECODER.raw_decode(text, start)
            spans[str(key)] = (start, end)
            position = _skip(text, end)
            if position < len(text) and text[position] == ",":
                position += 1
    except (ValueError, IndexError):
        return spans


def call_spans(text: str) -> tuple[list[Span], list[Span]]:
    """The spans of every ``<tool_call>``'s function name and of each of its argument values in ``text``."""
    names, values = [], []
    for opened in _CALL_OPEN.finditer(text):
        members = object_member_spans(text, opened.end())
        if "name" in members:
            names.append(members["name"])
        if "arguments" in members:
            values += list(object_member_spans(text, members["arguments"][0]).values())
    return names, values


def _tokens_in(span: Span, offsets: Sequence[int], count: int) -> list[int]:
    """Tokens (by index) whose characters [offsets[i], offsets[i + 1]) overlap ``span``."""
    start, end = span
    return [i for i in range(count) if offsets[i] < end and offsets[i + 1] > start]


def answer_confidence(text: str, offsets: Sequence[int], logprobs: Sequence[float]) -> dict[str, float] | None:
    """The features of one answer: ``text`` is its decode, ``offsets[i]`` where token ``i``'s characters begin in
    it (``len(logprobs) + 1`` entries, the last ``len(text)``), ``logprobs[i]`` token ``i``'s log-probability.
    ``None`` for an empty answer."""
    count = len(logprobs)
    if count == 0:
        return None
    values = [float(v) for v in logprobs]
    features = {"mean_logprob": sum(values) / count, "min_logprob": min(values)}
    names, arguments = call_spans(text)
    name_tokens = [i for span in names for i in _tokens_in(span, offsets, count)]
    features["name_logprob"] = min((values[i] for i in name_tokens), default=features["min_logprob"])
    per_value = []
    for span in arguments:
        tokens = _tokens_in(span, offsets, count)
        if tokens:
            per_value.append(sum(values[i] for i in tokens) / len(tokens))
    features["value_logprob"] = min(per_value, default=0.0 if names else features["min_logprob"])
    return features


# A logprob this low stands for "never": keeps the features finite for the fit.
_FLOOR = -50.0


@dataclass(frozen=True)
class Calibrator:
    """P(the SLM's answer matches the LLM's) = sigmoid(features · coefficients + intercept), on raw features."""

    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        logits = np.asarray(matrix, dtype=float) @ np.asarray(self.coefficients, dtype=float) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500)))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "coefficients": list(self.coefficients), "intercept": self.intercept}

    def confidence(self, features: Mapping[str, float] | None) -> float | None:
        """One answer's calibrated confidence: its features (components/slm/confidence.py) through
        :func:`feature_matrix` and :meth:`predict`, the path the gate scores its held-out answers on; None when
        the answer carries no features (an engine that returns none)."""
        matrix = feature_matrix([features], self.features)
        return None if matrix is None else float(self.predict(matrix)[0])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        return cls(tuple(data["features"]), tuple(float(c) for c in data["coefficients"]), float(data["intercept"]))


def feature_matrix(
    confidences: Sequence[Mapping[str, float] | None] | None, features: Sequence[str] = FEATURES
) -> np.ndarray | None:
    """One row per answer, one column per feature; ``None`` when any answer has no confidence (an engine that
    returns none): such a cluster cannot be served selectively."""
    if not confidences or any(c is None for c in confidences):
        return None
    rows = [[float(c.get(name, 0.0)) for name in features] for c in confidences]  # type: ignore[union-attr]
    return np.clip(np.nan_to_num(np.array(rows, dtype=float), nan=_FLOOR, neginf=_FLOOR), _FLOOR, 0.0)


Decision = str  # "accept" (the SLM answers) or "defer" (the LLM answers)


@dataclass(frozen=True)
class Verdict:
    """A selective gate applied to one answer: its calibrated confidence (None without features), the threshold,
    and the decision."""

    confidence: float | None
    threshold: float
    decision: Decision

    @property
    def accepted(self) -> bool:
        return self.decision == "accept"

    def as_fields(self) -> dict[str, Any]:
        threshold = self.threshold if math.isfinite(self.threshold) else None  # inf (accept nothing) is not JSON
        return {"confidence": self.confidence, "threshold": threshold, "decision": self.decision}


@dataclass(frozen=True)
class SelectiveGate:
    """What S6 ships for a ``selective`` cluster (components/evaluate/router_config.py ``selective_gate``): the
    calibrator and the threshold; an answer is kept when its calibrated confidence is ≥ the threshold, as the gate
    counted its accepted calls (components/evaluate/selective.py ``CrossFit.accepted``)."""

    calibrator: Calibrator
    threshold: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], threshold: float | None = None) -> SelectiveGate:
        """From a gate file's JSON; ``threshold`` (router.yaml's) overrides the file's. No threshold at all (the
        gate accepted nothing): ``inf``, every answer deferred."""
        chosen = threshold if threshold is not None else data.get("threshold")
        return cls(Calibrator.from_dict(data), math.inf if chosen is None else float(chosen))

    @classmethod
    def load(cls, path: str | Path, threshold: float | None = None) -> SelectiveGate:
        return cls.from_dict(json.loads(Path(path).read_text()), threshold)

    def verdict(self, features: Mapping[str, float] | None) -> Verdict:
        """Accept when the answer's calibrated confidence clears the threshold; defer when it does not or when
        the answer has no confidence."""
        confidence = self.calibrator.confidence(features)
        accepted = confidence is not None and confidence >= self.threshold
        return Verdict(confidence, self.threshold, "accept" if accepted else "defer")


def features_from(value: Any) -> dict[str, float] | None:
    """Confidence features read back from another process (an SLM server's ``llm2slm.features``): a mapping of the
    known feature names to finite numbers, or None when it is not one."""
    if not isinstance(value, Mapping):
        return None
    features = {}
    for name in FEATURES:
        number = value.get(name)
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            return None
        features[name] = float(number)
    return features
