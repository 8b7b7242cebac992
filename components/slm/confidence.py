"""How sure the SLM was of an answer, from its own decode: each generated token's log-probability (renormalised over
the tokens the tool grammar allowed at that step) aggregated into a few features.

- ``mean_logprob``, ``min_logprob``: over every generated token, the stop token included;
- ``name_logprob``: the least likely token of the called functions' names (the tool choice);
- ``value_logprob``: per argument value the mean log-probability of its tokens, the least of those over the values.

An answer without a call takes ``min_logprob`` as its name feature; a call without arguments has nothing to doubt
in them (``value_logprob`` 0). S6's calibrator (components/evaluate/selective.py) learns from these what an answer's
chance of matching the LLM's is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

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
