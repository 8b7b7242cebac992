"""The context window of a multi-turn call: how much of the conversation so far a cluster's SLM is shown.

An agent's call carries the whole conversation: every earlier user turn, every call the agent made and every tool
result, growing with each step, so a conversation's late calls run to thousands of tokens against an SLM's
training window of a few hundred. What a call has to decide is mostly in its own turn: the user's current request
and the calls and results that followed it. The window keeps that turn whole, the last ``history_turns`` earlier
turns before it, and cuts each tool result to ``max_tool_result_chars`` characters, saying where and how much was
cut so the model never mistakes a cut result for a whole one. The prompt spec (components/slm/prompt_pruning.py)
records the two numbers, so training, evaluation and serving cut the same way.
"""

from __future__ import annotations

from components.core.schema import ChatMessage

CUT_MARK = " [... {count} more characters cut]"


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


def window_messages(
    messages: list[ChatMessage], history_turns: int | None, max_tool_result_chars: int | None
) -> list[ChatMessage]:
    """The messages a windowed prompt keeps, system messages left out: the current (last) turn whole, the last
    ``history_turns`` earlier turns (``None``: all), every tool result cut to ``max_tool_result_chars``."""
    turns = split_turns(messages)
    if history_turns is not None:
        turns = turns[-(history_turns + 1) :]
    kept = [message for turn in turns for message in turn]
    if max_tool_result_chars is None:
        return kept
    return [
        message.model_copy(update={"content": cut_text(message.content or "", max_tool_result_chars)})
        if message.role == "tool"
        else message
        for message in kept
    ]
