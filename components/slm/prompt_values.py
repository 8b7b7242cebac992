"""The values a call passes on, and whether a text states them: what value recall (components/slm/value_recall.py)
counts and what the context window keeps from older turns (components/slm/context_window.py).

A call's answer passes argument values on (a symbol, a file name, a count). When the value occurs in the full
prompt (the request, an earlier call, a tool result) the model can copy it; when the compact prompt dropped it, no
training makes the answer derivable. *Value recall* is, over a cluster's calls, the share of the answer's values
stated in the full prompt that the compact prompt still states. A value is a string or number leaf of the
answer's arguments, two characters or more, found verbatim as a whole word or phrase (booleans never count).
"""

from __future__ import annotations

import json
import re
from typing import Any

from components.core.schema import CallRecord

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
