"""Every text of a call record, and the record rebuilt with each text rewritten: message contents, tool-call
argument values (the JSON is parsed, strings are rewritten, numbers/booleans/null keep their type) and the free
text of tool schemas. Used by S2 to find and replace personal data. Framework-free."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from components.core.schema import CallRecord, ChatMessage, ToolCall

# Keys of a tool schema whose string values are identifiers or syntax, not free text.
_SCHEMA_SYNTAX_KEYS = frozenset({"type", "name", "required", "format", "pattern", "$ref", "$schema", "$id"})


def _map_argument_strings(value: Any, rewrite: Callable[[str], str], top_level: bool = True) -> Any:
    """Strings of a call's arguments, including the keys of nested objects: the top-level keys are the tool's
    parameter names, but below them a key can be data (``{"cards": {"Alex": [...]}}``)."""
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        mapped: dict[str, Any] = {}
        for key, item in value.items():
            new_key = key if top_level else rewrite(key)
            if new_key in mapped:  # two keys, one placeholder ("Emma Johnson" and "Emma"): both entries stay
                new_key = next(f"{new_key}#{n}" for n in range(2, len(value) + 2) if f"{new_key}#{n}" not in mapped)
            mapped[new_key] = _map_argument_strings(item, rewrite, False)
        return mapped
    if isinstance(value, list):
        return [_map_argument_strings(item, rewrite, False) for item in value]
    return value  # numbers, booleans and null keep their JSON type


def map_schema_strings(value: Any, rewrite: Callable[[str], str]) -> Any:
    """Free text of tool schemas (descriptions, enum values, defaults, examples); names, types and property keys
    are identifiers the calls refer to and stay."""
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        return {
            key: item if key in _SCHEMA_SYNTAX_KEYS else map_schema_strings(item, rewrite)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [map_schema_strings(item, rewrite) for item in value]
    return value


def _collect(mapper: Callable[[Any, Callable[[str], str]], Any], value: Any) -> list[str]:
    texts: list[str] = []
    mapper(value, lambda text: texts.append(text) or text)
    return texts


def _call_texts(call: ToolCall) -> list[str]:
    try:
        return _collect(_map_argument_strings, json.loads(call.arguments))
    except json.JSONDecodeError:
        return [call.arguments]


def message_contents(record: CallRecord) -> list[str]:
    """The free text of the conversation: every message's content and the response's (no arguments, no schemas)."""
    return [message.content for message in [*record.messages, record.response] if message.content]


def argument_texts(record: CallRecord) -> list[str]:
    """The strings of every tool call's arguments (history and response), deduplicated."""
    texts = [
        text
        for message in [*record.messages, record.response]
        for call in message.tool_calls
        for text in _call_texts(call)
    ]
    return list(dict.fromkeys(texts))


def record_texts(record: CallRecord, include_tool_schemas: bool = True) -> list[str]:
    """Every text of the record in reading order (tool schemas, history, then response), deduplicated."""
    texts: list[str] = _collect(map_schema_strings, record.tools) if include_tool_schemas else []
    for message in [*record.messages, record.response]:
        if message.content:
            texts.append(message.content)
        for call in message.tool_calls:
            texts.extend(_call_texts(call))
    return list(dict.fromkeys(texts))


def _rewrite_call(call: ToolCall, rewrite: Callable[[str], str]) -> ToolCall:
    try:
        parsed = json.loads(call.arguments)
    except json.JSONDecodeError:
        return call.model_copy(update={"arguments": rewrite(call.arguments)})
    rewritten = _map_argument_strings(parsed, rewrite)
    if rewritten == parsed:
        return call  # untouched arguments keep the LLM's exact text
    return call.model_copy(update={"arguments": json.dumps(rewritten, ensure_ascii=False)})


def rewrite_message(message: ChatMessage, rewrite: Callable[[str], str]) -> ChatMessage:
    return message.model_copy(
        update={
            "content": rewrite(message.content) if message.content else message.content,
            "tool_calls": [_rewrite_call(call, rewrite) for call in message.tool_calls],
        }
    )
