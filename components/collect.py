"""S1 collect: read logged agent LLM calls, normalize them into CallRecords, quarantine what does not fit.

Two input forms are accepted, one JSON object per line:

* request/response, as logging proxies export it:
  ``{"id", "timestamp", "agent", "request": {model, messages, tools}, "response": {choices: [{message}], usage},
  "latency_ms"}`` (id, timestamp, agent and latency_ms optional);
* the OpenAI fine-tuning form ``{"messages": [...], "tools": [...]}`` whose last assistant message is the response.

A line that is not JSON or does not fit either form is written to the quarantine with its line number and the
reason; the rest of the file is still read. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from components.config import StepConfig
from components.schema import CallRecord, ChatMessage


class TokenPrice(StepConfig):
    input: float
    output: float


class CollectConfig(StepConfig):
    input: str = "data/raw/calls.jsonl"
    output: str = "data/collected/records.parquet"
    quarantine: str = "data/quarantine.jsonl"
    summary: str = "reports/collect.json"
    default_agent: str = "default"
    prices_per_1m_tokens: dict[str, TokenPrice] = {}


@dataclass
class QuarantineEntry:
    line_number: int
    reason: str
    # Only a short, typed description of the line is kept, never its text: the line may hold raw PII.
    line_kind: str

    def to_json(self) -> str:
        return json.dumps({"line_number": self.line_number, "reason": self.reason, "line_kind": self.line_kind})


@dataclass
class CollectResult:
    records: list[CallRecord] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    duplicate_ids: int = 0

    def summary(self) -> dict[str, Any]:
        by_source: dict[str, int] = {}
        for record in self.records:
            by_source[record.source] = by_source.get(record.source, 0) + 1
        return {
            "records": len(self.records),
            "quarantined": len(self.quarantine),
            "duplicate_ids_renamed": self.duplicate_ids,
            "by_source": by_source,
            "tool_call_records": sum(r.output_kind == "tool_call" for r in self.records),
            "llm_cost_usd": round(sum(r.cost_usd or 0.0 for r in self.records), 6),
        }


class RecordError(ValueError):
    """The line is JSON but not a loggable LLM call; the message is the quarantine reason."""


def content_id(obj: Any) -> str:
    """A stable id for records logged without one: a hash of the call's content."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return f"rec-{digest[:16]}"


def _message_from_openai(raw: Any, where: str) -> ChatMessage:
    if not isinstance(raw, dict):
        raise RecordError(f"{where} is not an object")
    tool_calls = []
    for call in raw.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise RecordError(f"{where} has a tool call without a function name")
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


def _messages(raw: Any, where: str) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise RecordError(f"{where} must be a non-empty list of messages")
    return [_message_from_openai(message, f"{where}[{index}]") for index, message in enumerate(raw)]


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(tool, dict) for tool in raw):
        raise RecordError("tools must be a list of objects")
    return raw


def parse_call(obj: Any, cfg: CollectConfig) -> CallRecord:
    """Normalize one decoded log object; raises RecordError with the reason when it does not fit."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    if "request" in obj or "response" in obj:
        request, response = obj.get("request"), obj.get("response")
        if not isinstance(request, dict):
            raise RecordError("missing or invalid 'request' object")
        if not isinstance(response, dict):
            raise RecordError("missing or invalid 'response' object")
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RecordError("response has no choices")
        answer = _message_from_openai(choices[0].get("message") if isinstance(choices[0], dict) else None,
                                      "response.choices[0].message")
        messages = _messages(request.get("messages"), "request.messages")
        tools = _tools(request.get("tools"))
        usage = response.get("usage") or {}
        model = request.get("model") or response.get("model")
        source = "request_response"
    elif "messages" in obj:
        messages = _messages(obj.get("messages"), "messages")
        if messages[-1].role != "assistant":
            raise RecordError("the last message must be the assistant's response")
        answer, messages = messages[-1], messages[:-1]
        if not messages:
            raise RecordError("no prompt before the assistant's response")
        tools = _tools(obj.get("tools"))
        usage = obj.get("usage") or {}
        model = obj.get("model")
        source = "chat_messages"
    else:
        raise RecordError("neither a request/response pair nor a 'messages' conversation")
    if answer.role != "assistant":
        raise RecordError("the response message is not from the assistant")
    if not answer.tool_calls and not (answer.content or "").strip():
        raise RecordError("the response has neither content nor tool calls")
    for call in answer.tool_calls:
        try:
            call.parsed_arguments()
        except ValueError:
            raise RecordError(f"tool call '{call.name}' has arguments that are not a JSON object") from None

    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    try:
        return CallRecord(
            record_id=str(obj["id"]) if obj.get("id") not in (None, "") else content_id(obj),
            timestamp=obj.get("timestamp"),
            agent=obj.get("agent") or cfg.default_agent,
            source=source,
            model=model,
            messages=messages,
            tools=tools,
            response=answer,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=obj.get("latency_ms"),
            cost_usd=obj.get("cost_usd", call_cost(model, prompt_tokens, completion_tokens, cfg)),
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise RecordError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def call_cost(model: str | None, prompt_tokens: int | None, completion_tokens: int | None,
              cfg: CollectConfig) -> float | None:
    """USD cost from the price table; None when the model or the token counts are unknown."""
    price = cfg.prices_per_1m_tokens.get(model or "")
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def _line_kind(text: str) -> str:
    stripped = text.strip()
    return "empty" if not stripped else {"{": "object", "[": "array"}.get(stripped[0], "other")


def collect_lines(lines: Iterable[str], cfg: CollectConfig) -> CollectResult:
    result = CollectResult()
    seen_ids: set[str] = set()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines are layout, not data
        try:
            record = parse_call(json.loads(line), cfg)
        except json.JSONDecodeError as error:
            result.quarantine.append(QuarantineEntry(line_number, f"not valid JSON: {error.msg}", _line_kind(line)))
            continue
        except RecordError as error:
            result.quarantine.append(QuarantineEntry(line_number, str(error), _line_kind(line)))
            continue
        if record.record_id in seen_ids:
            # Two different calls logged under one id: keep both, make the second id unique and say so.
            result.duplicate_ids += 1
            record = record.model_copy(update={"record_id": f"{record.record_id}#L{line_number}"})
        seen_ids.add(record.record_id)
        result.records.append(record)
    return result


def collect_file(path: Path, cfg: CollectConfig) -> CollectResult:
    if not path.exists():
        raise FileNotFoundError(f"input log not found: {path}")
    with path.open(encoding="utf-8", errors="replace") as handle:
        return collect_lines(handle, cfg)


def write_quarantine(entries: list[QuarantineEntry], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(entry.to_json() + "\n" for entry in entries))
    return path
