"""Reader for OpenAI-shaped JSONL logs, one JSON object per line, in any of these forms (detected per line):

* request/response, as logging proxies export it: ``{"id", "timestamp", "agent", "request": {model, messages,
  tools}, "response": {choices: [{message}], usage}, "latency_ms", "metadata"}`` (all but request/response
  optional; ``metadata`` is kept as the record's metadata, e.g. the S6 router's ``route``); a logged
  ``conversation_id``/``session_id``/``thread_id``/``trace_id`` (top level or in ``metadata``) becomes the
  record's ``conversation_id``, else the hash of its history's prefix (components/core/schema.py);
  ``response`` may also be the list of ``chat.completion.chunk`` objects of a streamed call: the final message and
  its tool calls are rebuilt from the deltas;
* the OpenAI fine-tuning/chat form ``{"messages": [...], "tools": [...]}``; a multi-turn conversation gives one
  record per assistant turn that answers an input (user, tool result, system), with everything before it as
  context. Consecutive assistant messages belong to one turn: the first is the call's answer, the others context.
  A conversation logged up to a tool result (captured mid-loop) keeps its answered calls; its unanswered tail is
  quarantined with the reason. The line's ``id`` (else a ``session_id``-like field) is its records'
  ``conversation_id``;
* ``{"record": {...}}``: an already normalized CallRecord (what the proxy writes when it anonymizes on write);
* ``{"error": ...}``: a failed upstream call the proxy recorded: quarantined with its status, never a record.

A line that does not fit is quarantined with its line number, byte offset and the reason; the rest is still read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from components.collect.config import CollectConfig
from components.collect.sources.common import (
    ChunkAccumulator,
    QuarantineEntry,
    RawLine,
    RecordError,
    SourceBatch,
    build_record,
    content_id,
    decode_line,
    iter_lines,
    line_kind,
    logged_conversation_id,
    message_from_openai,
    messages_from_openai,
    tools_from_openai,
)
from components.core.schema import CallRecord


def response_from_chunks(chunks: list[Any]) -> dict[str, Any]:
    accumulator = ChunkAccumulator()
    for chunk in chunks:
        accumulator.add(chunk)
    return accumulator.response()


def _request_response(obj: dict[str, Any], cfg: CollectConfig, source: str) -> CallRecord:
    request, response = obj.get("request"), obj.get("response")
    if not isinstance(request, dict):
        raise RecordError("missing or invalid 'request' object")
    if isinstance(response, list):
        if not response:
            raise RecordError("the streamed response has no chunks")
        response = response_from_chunks(response)
        source = f"{source}_stream"
    if not isinstance(response, dict):
        raise RecordError("missing or invalid 'response' object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise RecordError("response has no choices")
    answer = message_from_openai(
        choices[0].get("message") if isinstance(choices[0], dict) else None, "response.choices[0].message"
    )
    return build_record(
        cfg,
        record_id=str(obj["id"]) if obj.get("id") not in (None, "") else content_id(obj),
        source=source,
        messages=messages_from_openai(request.get("messages"), "request.messages"),
        answer=answer,
        tools=tools_from_openai(request.get("tools")),
        model=request.get("model") or response.get("model"),
        usage=response.get("usage"),
        timestamp=obj.get("timestamp"),
        agent=obj.get("agent"),
        latency_ms=obj.get("latency_ms"),
        cost_usd=obj.get("cost_usd"),
        metadata=obj.get("metadata"),
        conversation_id=logged_conversation_id(obj),
    )


def _conversation(obj: dict[str, Any], cfg: CollectConfig) -> list[CallRecord | RecordError]:
    messages = messages_from_openai(obj.get("messages"), "messages")
    if not any(message.role == "assistant" for message in messages):
        raise RecordError("the conversation has no assistant response")
    tools = tools_from_openai(obj.get("tools"))
    turns = [
        index
        for index, message in enumerate(messages)
        if message.role == "assistant" and index > 0 and messages[index - 1].role != "assistant"
    ]
    if not turns:
        raise RecordError("no prompt before the assistant's response")
    base_id = str(obj["id"]) if obj.get("id") not in (None, "") else content_id(obj)
    conversation_id = logged_conversation_id(obj) or base_id
    last = turns[-1]
    results: list[CallRecord | RecordError] = []
    for index in turns:
        try:
            # Usage, latency and cost logged beside a conversation belong to its final call only.
            final = index == last
            results.append(
                build_record(
                    cfg,
                    record_id=base_id if len(turns) == 1 else f"{base_id}#m{index}",
                    source="chat_messages",
                    messages=messages[:index],
                    answer=messages[index],
                    tools=tools,
                    model=obj.get("model"),
                    usage=obj.get("usage") if final else None,
                    timestamp=obj.get("timestamp"),
                    agent=obj.get("agent"),
                    latency_ms=obj.get("latency_ms") if final else None,
                    cost_usd=obj.get("cost_usd") if final else None,
                    conversation_id=conversation_id,
                )
            )
        except RecordError as error:
            results.append(RecordError(f"messages[{index}]: {error}"))
    # A log captured mid-loop ends after a tool result (or a user message) with no answer yet: the calls before
    # it stand; the unanswered tail is reported, since it is no call.
    answered_until = max(index for index, message in enumerate(messages) if message.role == "assistant")
    if answered_until < len(messages) - 1:
        tail = messages[answered_until + 1 :]
        results.append(
            RecordError(
                f"messages[{answered_until + 1}:]: the log stops after a {tail[-1].role} message with no answer "
                f"logged ({len(tail)} unanswered message(s) left out; the {len(turns)} call(s) before them kept)"
            )
        )
    return results


def parse_object(obj: Any, cfg: CollectConfig, source: str = "request_response") -> list[CallRecord | RecordError]:
    """Every call in one decoded log object: records, or the reason each call does not fit."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("quarantined"), str):  # the proxy could not anonymize the call and kept only the reason
        raise RecordError(f"not recorded by the proxy: {obj['quarantined']}")
    if "error" in obj and "response" not in obj:
        status = obj.get("error", {}).get("status") if isinstance(obj.get("error"), dict) else None
        raise RecordError(f"failed upstream call (HTTP {status}) recorded by the proxy: not a training example")
    if "record" in obj:
        try:
            return [CallRecord.model_validate(obj["record"])]
        except ValidationError as error:
            first = error.errors()[0]
            raise RecordError(f"record.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if "request" in obj or "response" in obj:
        return [_request_response(obj, cfg, source)]
    if "messages" in obj:
        return _conversation(obj, cfg)
    raise RecordError("neither a request/response pair nor a 'messages' conversation")


def parse_call(obj: Any, cfg: CollectConfig) -> CallRecord:
    """Exactly one record from one log object (the proxy's check before it stores a call)."""
    results = parse_object(obj, cfg)
    for result in results:
        if isinstance(result, RecordError):
            raise result
    if len(results) != 1:
        raise RecordError(f"expected one call, found {len(results)}")
    return results[0]  # type: ignore[return-value]


def parse_line(
    raw: RawLine, cfg: CollectConfig, source: str, batch: SourceBatch, source_name: str = "request_response"
) -> None:
    """Decode and parse one raw line into ``batch`` (records or quarantine entries)."""
    obj = decode_line(raw, cfg, source)
    if obj is None:
        return
    if isinstance(obj, QuarantineEntry):
        batch.quarantine.append(obj)
        return
    try:
        results = parse_object(obj, cfg, source_name)
    except RecordError as error:
        results = [error]
    for result in results:
        if isinstance(result, RecordError):
            batch.quarantine.append(
                QuarantineEntry(raw.number, str(result), line_kind(raw.data or b""), source, raw.offset)
            )
        else:
            batch.records.append(result)


def read_lines(lines: Iterable[str], cfg: CollectConfig, source: str = "") -> SourceBatch:
    """Parse in-memory text lines (tests, small inputs)."""
    batch = SourceBatch()
    offset = 0
    for number, line in enumerate(lines, start=1):
        data = line.encode("utf-8", errors="surrogateescape")
        parse_line(RawLine(number, offset, data, len(data)), cfg, source, batch)
        offset += len(data)
    return batch


def file_watermark(path: Path, previous: dict[str, Any] | None) -> tuple[int, int]:
    """Where to resume reading ``path``: (byte offset, lines already read); from the start when the file was
    replaced or truncated since (its size is below the offset, or its first bytes changed)."""
    if not previous:
        return 0, 0
    size = path.stat().st_size
    if size < previous.get("offset", 0) or _head_digest(path) != previous.get("head"):
        return 0, 0
    return previous.get("offset", 0), previous.get("lines", 0)


def _head_digest(path: Path) -> str:
    # A digest, not the bytes: the state file must hold no log content (the first line may hold PII).
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(64)).hexdigest()


def new_file_watermark(path: Path, offset: int, lines: int) -> dict[str, Any]:
    return {"offset": offset, "lines": lines, "head": _head_digest(path)}


def stored_line_limit(cfg: CollectConfig, encrypted: bool) -> int:
    """The longest line read: ``collect.max_line_bytes``, or 4 times that for an encrypted line (a Fernet token
    is base64 of the padded, authenticated bytes: about 4/3 of the plain line, with room to spare)."""
    return 4 * cfg.max_line_bytes if encrypted else cfg.max_line_bytes


def read_jsonl_files(
    paths: list[Path],
    cfg: CollectConfig,
    source: str,
    watermark: dict[str, Any],
    decode: Any = None,
    source_name: str = "request_response",
) -> SourceBatch:
    """Read each file from its watermark on; ``decode`` turns a stored line into plain JSON bytes (the encrypted
    proxy store) and returns None for a line that cannot be decoded."""
    batch = SourceBatch(watermark={"files": dict(watermark.get("files", {}))})
    for path in paths:
        key = str(path.resolve())
        offset, lines = file_watermark(path, watermark.get("files", {}).get(key))
        for raw in iter_lines(path, offset, lines, stored_line_limit(cfg, decode is not None)):
            if decode is not None and raw.data is not None and raw.data.strip():
                plain = decode(raw.data)
                if plain is None:
                    batch.quarantine.append(
                        QuarantineEntry(
                            raw.number, "line cannot be decrypted (altered or torn)", "encrypted", source, raw.offset
                        )
                    )
                    offset, lines = (raw.offset + raw.length, raw.number) if raw.complete else (offset, lines)
                    continue
                raw = RawLine(raw.number, raw.offset, plain + b"\n", raw.length, raw.complete)
            parse_line(raw, cfg, source, batch, source_name)
            if raw.complete:
                offset, lines = raw.offset + raw.length, raw.number
        batch.watermark["files"][key] = new_file_watermark(path, offset, lines)
    return batch
