"""Reader for MLflow traces: the chat/LLM spans that ``mlflow.openai.autolog()`` (and other MLflow tracing
integrations that log OpenAI-shaped inputs and outputs) record in a tracking store become records.

This module is framework-free: it maps traces in MLflow's serialized form (``Trace.to_dict()``: ``info`` +
``data.spans`` with JSON-encoded attributes) to records. Fetching them through the MLflow client is the task
layer's job (tasks/collect.py passes a ``TraceFetcher``), which keeps MLflow out of components/.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from components.collect.config import CollectConfig
from components.collect.sources.common import (
    QuarantineEntry,
    RecordError,
    SourceBatch,
    build_record,
    message_from_openai,
    messages_from_openai,
    tools_from_openai,
)
from components.core.schema import CallRecord

CHAT_SPAN_TYPES = {"CHAT_MODEL", "LLM"}


class TraceFetcher(Protocol):
    def __call__(
        self, tracking_uri: str, experiment: str, since_ms: int | None, until_ms: int | None
    ) -> list[dict[str, Any]]:
        """Traces of the experiment with ``since_ms <= request time < until_ms``, oldest first, as dicts."""


def _attribute(span: dict[str, Any], name: str) -> Any:
    value = (span.get("attributes") or {}).get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _span_record(trace_id: str, span: dict[str, Any], agent: str | None, cfg: CollectConfig) -> CallRecord:
    inputs, outputs = _attribute(span, "mlflow.spanInputs"), _attribute(span, "mlflow.spanOutputs")
    if not isinstance(inputs, dict) or "messages" not in inputs:
        raise RecordError("span inputs are not an OpenAI chat request (no 'messages')")
    if isinstance(outputs, dict) and isinstance(outputs.get("choices"), list) and outputs["choices"]:
        first = outputs["choices"][0]
        answer = message_from_openai(
            first.get("message") if isinstance(first, dict) else None, "span outputs.choices[0].message"
        )
    elif isinstance(outputs, str):
        answer = message_from_openai({"role": "assistant", "content": outputs}, "span outputs")
    else:
        raise RecordError("span outputs are not an OpenAI chat completion")
    usage = _attribute(span, "mlflow.chat.tokenUsage") or (outputs.get("usage") if isinstance(outputs, dict) else None)
    start, end = span.get("start_time_unix_nano"), span.get("end_time_unix_nano")
    latency = (end - start) / 1e6 if isinstance(start, int) and isinstance(end, int) else None
    return build_record(
        cfg,
        record_id=f"{trace_id}/{span.get('span_id')}",
        source="mlflow_trace",
        messages=messages_from_openai(inputs["messages"], "span inputs.messages"),
        answer=answer,
        tools=tools_from_openai(inputs.get("tools")),
        model=inputs.get("model") or _attribute(span, "mlflow.llm.model"),
        usage=usage,
        timestamp=datetime.fromtimestamp(start / 1e9, tz=UTC) if isinstance(start, int) else None,
        agent=agent,
        latency_ms=latency,
    )


def records_from_traces(
    traces: list[dict[str, Any]],
    experiment: str,
    cfg: CollectConfig,
    source: str,
    batch: SourceBatch,
    seen_trace_ids: set[str],
) -> None:
    """Add the records of every chat span of ``traces`` to ``batch``; a span that does not fit is quarantined
    (``line_number`` = the trace's position in this read, ``offset`` = the span's position in its trace)."""
    for number, trace in enumerate(traces, start=1):
        info = trace.get("info") or {}
        trace_id = str(info.get("trace_id") or info.get("request_id") or f"trace-{number}")
        if trace_id in seen_trace_ids:
            continue
        seen_trace_ids.add(trace_id)
        spans = (trace.get("data") or {}).get("spans") or []
        root = next((span for span in spans if not span.get("parent_span_id")), None)
        # The workload: an explicit tag, else the agent function wrapping the LLM call, else the experiment.
        tags = info.get("tags") or {}
        for position, span in enumerate(spans):
            if _attribute(span, "mlflow.spanType") not in CHAT_SPAN_TYPES:
                continue
            wrapper = root.get("name") if root is not None and root is not span else None
            agent = tags.get("agent") or wrapper or experiment
            try:
                batch.records.append(_span_record(trace_id, span, agent, cfg))
            except RecordError as error:
                batch.quarantine.append(QuarantineEntry(number, str(error), "span", source, position))


def read_mlflow(
    tracking_uri: str,
    experiment: str,
    since_ms: int | None,
    until_ms: int | None,
    cfg: CollectConfig,
    source: str,
    watermark: dict[str, Any],
    fetch: Callable[..., list[dict[str, Any]]],
) -> SourceBatch:
    """Traces newer than the watermark (the last request time read, and the ids read at that very millisecond,
    since the next read starts there again to miss none written in the same millisecond)."""
    start = max(filter(None, [since_ms, watermark.get("last_ms")]), default=None)
    traces = fetch(tracking_uri, experiment, start, until_ms)
    batch = SourceBatch(watermark=dict(watermark))
    seen = set(watermark.get("ids_at_last_ms", [])) if start == watermark.get("last_ms") else set()
    records_from_traces(traces, experiment, cfg, source, batch, seen)
    times = [(_request_ms(trace), str((trace.get("info") or {}).get("trace_id"))) for trace in traces]
    if times:
        last_ms = max(ms for ms, _ in times)
        previous = set(watermark.get("ids_at_last_ms", [])) if last_ms == watermark.get("last_ms") else set()
        batch.watermark = {
            "last_ms": last_ms,
            "ids_at_last_ms": sorted(previous | {tid for ms, tid in times if ms == last_ms}),
        }
    return batch


def _request_ms(trace: dict[str, Any]) -> int:
    info = trace.get("info") or {}
    if isinstance(info.get("timestamp_ms"), int):
        return info["timestamp_ms"]
    moment = datetime.fromisoformat(str(info.get("request_time")).replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)
