"""The context window of a multi-turn call: how much of the conversation so far a cluster's SLM is shown.

An agent's call carries the whole conversation: every earlier user turn, every call the agent made and every tool
result, growing with each step, so a conversation's late calls run to thousands of tokens against an SLM's
training window of a few hundred. What a call has to decide is mostly in its own turn: the user's current request
and the calls and results that followed it. The window keeps that turn whole, the last ``history_turns`` earlier
turns before it, and cuts each tool result to ``max_tool_result_chars`` characters, saying where and how much was
cut so the model never mistakes a cut result for a whole one. The prompt spec (components/slm/prompt_spec.py)
records the numbers, so training, evaluation and serving cut the same way.

A value the answer needs can come from further back ("sell the shares I bought earlier"): with ``digest_older``
the turns before the window are not dropped but become one line of the values they introduced (what the user's
requests name, the arguments of the calls made, the fields of their results), newest kept when it runs long.
On the demo this keeps value recall above 95 % at a fraction of those turns' tokens (benchmarks/prompt_window.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

from components.core.schema import ChatMessage
from components.slm.prompt_values import call_values, states

CUT_MARK = " [... {count} more characters cut]"
DIGEST_PREFIX = "Values from earlier turns: "
DIGEST_SEPARATOR = "; "
MAX_DIGEST_VALUE_CHARS = 60  # a longer leaf is prose, not a value a call passes on
# What a request names: quoted text, numbers, identifiers with digits or punctuation inside (file names, ids,
# emails), and capitalised names (a lone capitalised word opening a sentence is left out: it is mostly grammar).
_REQUEST_VALUE = re.compile(
    r"'([^']{2,60})'|\"([^\"]{2,60})\""
    r"|(?<![\w.])(\w+(?:[._@/:-]\w+)+|\$?\d+(?:\.\d+)?)(?![\w])"
    r"|((?:[A-Z][\w'&-]*)(?:\s+[A-Z][\w'&-]*)*)"
)


def cut_text(text: str, limit: int | None) -> str:
    """``text`` up to ``limit`` characters, with a mark that says how many were cut; unchanged when it fits."""
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + CUT_MARK.format(count=len(text) - limit)


def split_turns(messages: list[ChatMessage]) -> list[list[ChatMessage]]:
    """The conversation (system messages left out) as turns, each starting at a user message; what comes before
    the first user message, if anything, is a turn of its own."""
    turns: list[list[ChatMessage]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            continue
        if message.role == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def request_values(text: str) -> list[str]:
    """The values a request (or a result that is not JSON) names, in order."""
    values = []
    for found in _REQUEST_VALUE.finditer(text or ""):
        value = next(group for group in found.groups() if group)
        opens_sentence = found.start() == 0 or text[: found.start()].rstrip().endswith((".", "!", "?", ":"))
        if found.group(4) and (" " not in value and opens_sentence or value in ("I", "I'm", "I'd", "I've")):
            continue
        values.append(value.lstrip("$"))
    return values


def _result_leaves(value: Any, key: str | None = None) -> list[str]:
    if isinstance(value, dict):
        return [leaf for name, item in value.items() for leaf in _result_leaves(item, str(name))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _result_leaves(item, key)]
    if isinstance(value, bool) or value is None:
        return []
    text = value if isinstance(value, str) else json.dumps(value)
    if not 1 <= len(text) <= MAX_DIGEST_VALUE_CHARS:
        return []
    return [f"{key}={text}" if key else text]


def result_values(content: str) -> list[str]:
    """A tool result's scalar fields, as ``field=value`` (JSON), else the values its text names."""
    try:
        return _result_leaves(json.loads(content))
    except (json.JSONDecodeError, TypeError):
        return request_values(content)


def turn_values(turn: list[ChatMessage]) -> tuple[list[str], list[str]]:
    """What a turn introduced: its calls' arguments and its results' fields (as ``field=value``), and the values
    its requests name."""
    exchanged: list[str] = []
    requested: list[str] = []
    for message in turn:
        if message.role == "user":
            requested += request_values(message.content or "")
        elif message.role == "tool":
            exchanged += result_values(message.content or "")
        for call in message.tool_calls:
            exchanged += call_values(call.arguments)
    return exchanged, requested


def digest_turns(turns: list[list[ChatMessage]], shown: str, max_chars: int | None) -> ChatMessage | None:
    """One user message listing the values ``turns`` introduced that the ``shown`` text does not state, at most
    ``max_chars`` characters: first the values calls and results exchanged, then those the requests named, each
    newest first (a later call quotes ids, tokens and results more often than a request's words); ``None`` when
    there is nothing to add."""
    exchanged = [value for turn in turns for value in turn_values(turn)[0]]
    requested = [value for turn in turns for value in turn_values(turn)[1]]
    seen: set[str] = set()
    kept: list[str] = []
    length = len(DIGEST_PREFIX)
    for value in [*reversed(exchanged), *reversed(requested)]:
        bare = value.partition("=")[2] if "=" in value and not value.startswith("=") else value
        if bare in seen or len(bare) < 2 or states(shown, bare):
            continue
        seen.add(bare)
        if max_chars is not None and length + len(value) > max_chars:
            continue  # a shorter value further on may still fit
        length += len(value) + len(DIGEST_SEPARATOR)
        kept.append(value)
    if not kept:
        return None
    return ChatMessage(role="user", content=DIGEST_PREFIX + DIGEST_SEPARATOR.join(kept))


def window_messages(
    messages: list[ChatMessage],
    history_turns: int | None,
    max_tool_result_chars: int | None,
    digest_older: bool = False,
    max_digest_chars: int | None = None,
) -> list[ChatMessage]:
    """The messages a windowed prompt keeps, system messages left out: the current (last) turn whole, the last
    ``history_turns`` earlier turns (``None``: all), every tool result cut to ``max_tool_result_chars``; with
    ``digest_older`` the turns before those as one line of their values (:func:`digest_turns`)."""
    turns = split_turns(messages)
    older: list[list[ChatMessage]] = []
    if history_turns is not None:
        older, turns = turns[: -(history_turns + 1)], turns[-(history_turns + 1) :]
    kept = [message for turn in turns for message in turn]
    if max_tool_result_chars is not None:
        kept = [
            message.model_copy(update={"content": cut_text(message.content or "", max_tool_result_chars)})
            if message.role == "tool"
            else message
            for message in kept
        ]
    if digest_older and older:
        shown = "\n".join(message.content or "" for message in kept) + "\n".join(
            call.arguments for message in kept for call in message.tool_calls
        )
        digest = digest_turns(older, shown, max_digest_chars)
        kept = [digest, *kept] if digest else kept
    return kept
