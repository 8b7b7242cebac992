"""What every S1 reader shares: OpenAI message parsing, the record builder (cost from the price table), the
streaming-chunk accumulator, quarantine entries, content hashes, and a bounded, resumable JSONL line reader."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from components.collect.config import CollectConfig
from components.core.schema import CallRecord, ChatMessage


class RecordError(ValueError):
    """The input is readable but not a loggable LLM call; the message is the quarantine reason. Reasons never
    quote the input's text: it may hold raw PII."""


class SourceError(RuntimeError):
    """A whole source cannot be read (missing file, bad URI, unknown experiment): one clear message."""


@dataclass
class QuarantineEntry:
    line_number: int
    reason: str
    # Only a short, typed description of the line is kept, never its text: the line may hold raw PII.
    line_kind: str
    source: str = ""
    offset: int | None = None  # byte offset of the line in its file (or the item's position in a store)

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "line_number": self.line_number,
                "offset": self.offset,
                "reason": self.reason,
                "line_kind": self.line_kind,
            }
        )


@dataclass
class SourceBatch:
    """What one reader returns: the new records, the quarantined inputs, and the watermark to resume from."""

    records: list[CallRecord] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    watermark: dict[str, Any] = field(default_factory=dict)


def content_id(obj: Any) -> str:
    """A stable id for records logged without one: a hash of the call's content."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return f"rec-{digest[:16]}"


def content_hash(record: CallRecord) -> str:
    """What makes two records the same call whatever source logged it: model, prompt, tools and answer (not the
    id, time, latency or source, which differ between two logs of one call)."""
    payload = {
        "model": record.model,
        "tools": record.tools,
        "messages": [m.model_dump(mode="json", exclude_none=True) for m in record.messages],
        "response": record.response.model_dump(mode="json", exclude_none=True),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# Fields where logs keep the conversation (session, thread) a call belongs to, in order of preference; a trace
# comes last: tracers often open one trace per user turn, not per conversation.
CONVERSATION_FIELDS = ("conversation_id", "session_id", "thread_id", "trace_id")


def logged_conversation_id(obj: dict[str, Any]) -> str | None:
    """The conversation a log line names: a top-level field of CONVERSATION_FIELDS, else one in its metadata."""
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    for where in (obj, metadata):
        for key in CONVERSATION_FIELDS:
            if where.get(key) not in (None, ""):
                return str(where[key])
    return None


def message_from_openai(raw: Any, where: str) -> ChatMessage:
    if not isinstance(raw, dict):
        raise RecordError(f"{where} is not an object")
    tool_calls = []
    for index, call in enumerate(raw.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise RecordError(f"{where}.tool_calls[{index}] has no function name")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):  # some loggers store the parsed object
            arguments = json.dumps(arguments)
        tool_calls.append({"id": call.get("id"), "name": function["name"], "arguments": arguments})
    content = raw.get("content")
    if isinstance(content, list):  # content parts: keep the text parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    try:
        return ChatMessage.model_validate({**raw, "content": content, "tool_calls": tool_calls})
    except ValidationError as error:
        raise RecordError(f"{where}: {error.errors()[0]['msg']}") from None


def messages_from_openai(raw: Any, where: str) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise RecordError(f"{where} must be a non-empty list of messages")
    return [message_from_openai(message, f"{where}[{index}]") for index, message in enumerate(raw)]


def tools_from_openai(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(tool, dict) for tool in raw):
        raise RecordError("tools must be a list of objects")
    return raw


def call_cost(
    model: str | None, prompt_tokens: int | None, completion_tokens: int | None, cfg: CollectConfig
) -> float | None:
    """USD cost from the price table; None when the model or the token counts are unknown."""
    price = cfg.prices_per_1m_tokens.get(model or "")
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def check_answer(answer: ChatMessage) -> None:
    if answer.role != "assistant":
        raise RecordError("the response message is not from the assistant")
    if not answer.tool_calls and not (answer.content or "").strip():
        raise RecordError("the response has neither content nor tool calls")
    for index, call in enumerate(answer.tool_calls):
        try:
            call.parsed_arguments()
        except ValueError:
            raise RecordError(f"tool call {index} has arguments that are not a JSON object") from None


def _known_count(value: Any) -> Any:
    """A logged token count, None when the log has none: exports write an unknown count as null or NaN (JSON's
    ``NaN``, a float column's missing value), which means "not recorded", not a malformed call."""
    return None if isinstance(value, float) and math.isnan(value) else value


def build_record(
    cfg: CollectConfig,
    *,
    record_id: str,
    source: str,
    messages: list[ChatMessage],
    answer: ChatMessage,
    tools: list[dict[str, Any]],
    model: Any = None,
    usage: Any = None,
    timestamp: Any = None,
    agent: Any = None,
    latency_ms: Any = None,
    cost_usd: Any = None,
    metadata: Any = None,
    conversation_id: str | None = None,
) -> CallRecord:
    """The one place a CallRecord is made from parsed parts: answer checks, usage, cost from the price table.
    Without a ``conversation_id`` the record takes its history's prefix (schema.history_prefix_id)."""
    check_answer(answer)
    if not messages:
        raise RecordError("no prompt before the assistant's response")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = _known_count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion_tokens = _known_count(usage.get("completion_tokens", usage.get("output_tokens")))
    try:
        record = CallRecord(
            record_id=record_id,
            timestamp=timestamp,
            agent=agent or cfg.default_agent,
            source=source,
            model=model,
            messages=messages,
            tools=tools,
            response=answer,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
            metadata=metadata if isinstance(metadata, dict) else {},
            conversation_id=conversation_id,
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise RecordError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if record.cost_usd is None:
        cost = call_cost(record.model, record.prompt_tokens, record.completion_tokens, cfg)
        record = record.model_copy(update={"cost_usd": cost})
    return record


class ChunkAccumulator:
    """Rebuilds the final ``chat.completion`` from the ``chat.completion.chunk`` objects of a streamed one."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            raise RecordError("a stream chunk is not an object")
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self.meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        state = self._choices.setdefault(
            choice.get("index", 0), {"role": "assistant", "content": [], "tool_calls": {}, "finish": None}
        )
        delta = choice.get("delta") or {}
        if delta.get("role"):
            state["role"] = delta["role"]
        if isinstance(delta.get("content"), str):
            state["content"].append(delta["content"])
        for piece in delta.get("tool_calls") or []:
            # The first delta of a tool call carries its id and name; later ones only argument fragments.
            call = state["tool_calls"].setdefault(
                piece.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = call["id"] or piece.get("id")
            function = piece.get("function") or {}
            call["function"]["name"] = call["function"]["name"] or function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason"):
            state["finish"] = choice["finish_reason"]

    def response(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {"role": state["role"], "content": "".join(state["content"]) or None}
            if state["tool_calls"]:
                message["tool_calls"] = [state["tool_calls"][i] for i in sorted(state["tool_calls"])]
            choices.append({"index": index, "message": message, "finish_reason": state["finish"]})
        response: dict[str, Any] = {**self.meta, "object": "chat.completion", "choices": choices}
        if self.usage is not None:
            response["usage"] = self.usage
        return response


def line_kind(data: bytes) -> str:
    stripped = data.strip()
    return "empty" if not stripped else {ord("{"): "object", ord("["): "array"}.get(stripped[0], "other")


@dataclass
class RawLine:
    number: int
    offset: int
    data: bytes | None  # None: longer than the limit, skipped unread
    length: int
    complete: bool = True  # False: the file's last line, without its newline (a writer may still be at it)


def iter_lines(
    path: Path, start_offset: int = 0, start_line: int = 0, max_line_bytes: int = 8_000_000
) -> Iterator[RawLine]:
    """The lines of a file from a byte offset, as bytes (decoding is the caller's, so non-UTF-8 is quarantined,
    not replaced). A line over ``max_line_bytes`` is skipped in bounded chunks and yielded with ``data=None``.
    A last line without its newline is yielded with ``complete=False``: the caller should not move its watermark
    past it, since a writer may still be appending to it (the content hash drops it if read again whole)."""
    with path.open("rb") as handle:
        handle.seek(start_offset)
        offset, number = start_offset, start_line
        while True:
            data = handle.readline(max_line_bytes + 1)
            if not data:
                return
            length = len(data)
            too_long = length > max_line_bytes
            while too_long and not data.endswith(b"\n"):
                data = handle.readline(1 << 20)
                if not data:
                    break
                length += len(data)
            number += 1
            complete = data.endswith(b"\n")
            yield RawLine(number, offset, None if too_long else data, length, complete)
            offset += length
            if not complete:
                return


def decode_line(raw: RawLine, cfg: CollectConfig, source: str) -> Any:
    """The JSON value of one raw line; a QuarantineEntry when it is too long, not UTF-8 or not JSON (non-UTF-8
    is quarantined, never replaced: a silently altered prompt would train the SLM on garbage); None if blank."""

    def entry(reason: str) -> QuarantineEntry:
        return QuarantineEntry(raw.number, reason, line_kind(raw.data or b"{"), source, raw.offset)

    if raw.data is None:
        return entry(f"line of {raw.length} bytes is over collect.max_line_bytes ({cfg.max_line_bytes})")
    if not raw.data.strip():
        return None
    try:
        return json.loads(raw.data.decode("utf-8"))
    except UnicodeDecodeError as error:
        return entry(f"not UTF-8 (invalid byte at position {error.start})")
    except json.JSONDecodeError as error:
        return entry(f"not valid JSON: {error.msg}")


def request_record(
    request_body: dict[str, Any], agent: str | None = None, record_id: str | None = None, source: str = "router"
) -> CallRecord:
    """The prompt side of a request as a record (no answer yet: an empty assistant message). The router places it
    (with its agent: a task pinned by agent name is placed by it); the proxy anonymizes a failed call's request."""
    return CallRecord(
        record_id=record_id or f"route-{uuid.uuid4().hex}",
        agent=agent,
        source=source,
        model=request_body.get("model"),
        messages=messages_from_openai(request_body.get("messages"), "request.messages"),
        tools=tools_from_openai(request_body.get("tools")),
        response=ChatMessage(role="assistant"),
    )
