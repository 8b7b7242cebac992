"""Reader for generic JSONL or Parquet logs whose fields are named by a mapping in params.yaml
(``collect.mappings.<name>``: dotted paths to the messages, the response, the model, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.collect.config import CollectConfig, FieldMapping
from components.collect.sources.common import (
    QuarantineEntry,
    RecordError,
    SourceBatch,
    SourceError,
    build_record,
    content_id,
    decode_line,
    iter_lines,
    line_kind,
    message_from_openai,
    messages_from_openai,
    tools_from_openai,
)
from components.collect.sources.openai_jsonl import file_watermark, new_file_watermark
from components.core.schema import ChatMessage

_MISSING = object()


def field_at(row: Any, path: str | None) -> Any:
    """The value at a dotted path (``a.b.0.c``; digits index lists); None when any step is missing."""
    if path is None:
        return None
    value = row
    for step in path.split("."):
        if isinstance(value, dict):
            value = value.get(step, _MISSING)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            value = _MISSING
        if value is _MISSING:
            return None
    return value


def _decoded(value: Any) -> Any:
    # Parquet exports often hold nested parts as JSON text.
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def mapped_record(row: dict[str, Any], mapping: FieldMapping, cfg: CollectConfig, name: str):
    messages_raw = _decoded(field_at(row, mapping.messages))
    if messages_raw is None:
        raise RecordError(f"mapped field '{mapping.messages}' (messages) is missing")
    messages = (
        [ChatMessage(role="user", content=messages_raw)]
        if isinstance(messages_raw, str)
        else messages_from_openai(messages_raw, mapping.messages)
    )
    response_raw = _decoded(field_at(row, mapping.response))
    if response_raw is None:
        raise RecordError(f"mapped field '{mapping.response}' (response) is missing")
    answer = (
        ChatMessage(role="assistant", content=response_raw)
        if isinstance(response_raw, str)
        else message_from_openai(response_raw, mapping.response)
    )
    usage = {
        "prompt_tokens": field_at(row, mapping.prompt_tokens),
        "completion_tokens": field_at(row, mapping.completion_tokens),
    }
    record_id = field_at(row, mapping.id)
    return build_record(
        cfg,
        record_id=str(record_id) if record_id not in (None, "") else content_id(row),
        source=f"mapped:{name}",
        messages=messages,
        answer=answer,
        tools=tools_from_openai(_decoded(field_at(row, mapping.tools))),
        model=field_at(row, mapping.model),
        usage=usage,
        timestamp=field_at(row, mapping.timestamp),
        agent=field_at(row, mapping.agent),
        latency_ms=field_at(row, mapping.latency_ms),
    )


def read_mapped(
    path: Path, mapping_name: str, cfg: CollectConfig, source: str, watermark: dict[str, Any]
) -> SourceBatch:
    mapping = cfg.mappings.get(mapping_name)
    if mapping is None:
        raise SourceError(
            f"no field mapping '{mapping_name}' in params collect.mappings (known: {sorted(cfg.mappings)})"
        )
    if not path.is_file():
        raise SourceError(f"input log not found: {path}")
    batch = SourceBatch(watermark=dict(watermark))

    def add(number: int, offset: int | None, kind: str, row: Any) -> None:
        try:
            if not isinstance(row, dict):
                raise RecordError(f"expected an object, got {type(row).__name__}")
            batch.records.append(mapped_record(row, mapping, cfg, mapping_name))
        except RecordError as error:
            batch.quarantine.append(QuarantineEntry(number, str(error), kind, source, offset))

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        # Parquet files are rewritten, not appended: read them whole; the content hash drops what is known.
        # Rows as plain Python straight from Arrow: a null stays None (pandas would turn it into NaN, which a
        # token count or latency cannot hold) and an integer column stays integer.
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise SourceError(f"cannot read Parquet {path}: {type(error).__name__}") from None
        for number, row in enumerate(rows, start=1):
            add(number, None, "row", row)
        return batch

    offset, lines = file_watermark(path, watermark.get("file"))
    for raw in iter_lines(path, offset, lines, cfg.max_line_bytes):
        if raw.complete:
            offset, lines = raw.offset + raw.length, raw.number
        entry = decode_line(raw, cfg, source)
        if isinstance(entry, QuarantineEntry):
            batch.quarantine.append(entry)
        elif entry is not None:
            add(raw.number, raw.offset, line_kind(raw.data or b""), entry)
    batch.watermark["file"] = new_file_watermark(path, offset, lines)
    return batch
