"""S1 collect: read the agent's logged LLM calls from every configured source, normalize them into CallRecords,
quarantine what does not fit, and merge them into the collected records incrementally.

The readers live in components/collect/sources/ (one per source kind, see its docstring for the ``--source`` forms).
This module merges their output:

* **incremental**: each source keeps a watermark in ``collect.state`` (byte offset per file, last trace time for
  MLflow), so a re-run reads only what is new; the records collected before are read back and kept;
* **deduplicated**: one call logged twice, by another source or read again, is kept once: a record whose content
  hash (model, prompt, tools, answer) is already collected *at the same moment* (timestamps within
  ``collect.same_call_within_s``, or either without one) is skipped and counted, so a second ingestion of the same
  sources adds zero records. The same content at another time is a call the agent made again: a call of its own,
  kept and counted as a repeat, since the number of calls is what the conversion is sized and priced by (S2 keeps
  one copy for training; S6's summary counts every one);
* **nothing silent**: every skipped input is either a quarantine entry (source, line, offset, reason: never the
  text, it may hold PII) or a counted duplicate.

The watermarks are only valid together with the records they describe: if the records file is gone (a fresh
work dir, or a DVC stage output deleted before a run), the state is ignored and every source is read again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.collect.config import CollectConfig, FieldMapping, TokenPrice
from components.collect.sources import SourceError, SourceSpec, parse_source, read_source
from components.collect.sources.common import QuarantineEntry, RecordError, call_cost, content_hash, content_id
from components.collect.sources.openai_jsonl import parse_call, read_lines
from components.core.schema import CallRecord

__all__ = [
    "CollectConfig",
    "CollectResult",
    "FieldMapping",
    "QuarantineEntry",
    "RecordError",
    "SourceError",
    "TokenPrice",
    "call_cost",
    "collect_file",
    "collect_lines",
    "collect_sources",
    "content_id",
    "load_state",
    "parse_call",
    "source_specs",
    "write_quarantine",
    "write_state",
]

STATE_VERSION = 1


@dataclass
class CollectResult:
    records: list[CallRecord] = field(default_factory=list)  # everything collected so far (previous + new)
    quarantine: list[QuarantineEntry] = field(default_factory=list)  # this run's
    duplicate_ids: int = 0
    previous_records: int = 0
    duplicates_skipped: int = 0
    repeats_kept: int = 0  # calls whose content was collected before at another time: the agent made them again
    new_by_source: dict[str, int] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def new_records(self) -> int:
        return len(self.records) - self.previous_records

    def summary(self) -> dict[str, Any]:
        by_source: dict[str, int] = {}
        for record in self.records:
            by_source[record.source] = by_source.get(record.source, 0) + 1
        quarantined_by_source: dict[str, int] = {}
        for entry in self.quarantine:
            quarantined_by_source[entry.source] = quarantined_by_source.get(entry.source, 0) + 1
        return {
            "records": len(self.records),
            "new_records": self.new_records,
            "previous_records": self.previous_records,
            "quarantined": len(self.quarantine),
            "duplicates_skipped": self.duplicates_skipped,
            "repeats_kept": self.repeats_kept,
            "duplicate_ids_renamed": self.duplicate_ids,
            "by_source": by_source,
            "new_by_input": self.new_by_source,
            "quarantined_by_input": quarantined_by_source,
            "tool_call_records": sum(r.output_kind == "tool_call" for r in self.records),
            "llm_cost_usd": round(sum(r.cost_usd or 0.0 for r in self.records), 6),
        }


def unique_record_id(record_id: str, digest: str, taken: set[str]) -> str:
    """A new id for a call logged under an id already ``taken``: the id plus a prefix of the call's content hash,
    lengthened (then numbered, for identical content) until it is free.

    The suffix comes from the content, not from a position, so it is the same whichever source or run reads the
    call first, and two calls sharing an id never get the same new id: a position restarts per source and per run,
    and two records renamed ``x#jsonl0`` by two runs would alias in every ``{record_id: record}`` map downstream.
    """
    for length in (8, 16, len(digest)):
        candidate = f"{record_id}#{digest[:length]}"
        if candidate not in taken:
            return candidate
    return next(
        f"{record_id}#{digest}-{n}" for n in range(2, len(taken) + 3) if f"{record_id}#{digest}-{n}" not in taken
    )


def _utc(moment: datetime) -> datetime:
    # A log without a time zone is taken as UTC (as S1's Parquet stores it), so both forms compare.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def same_moment(first: datetime | None, second: datetime | None, within_s: float) -> bool:
    """Whether two logs of one content can be the same call: their times agree within ``within_s`` seconds. A log
    without a time cannot tell a second log of the call from a repeat, and counts as the same call."""
    if first is None or second is None:
        return True
    return abs((_utc(first) - _utc(second)).total_seconds()) <= within_s


def _call_digest(content_digest: str, moment: datetime | None) -> str:
    """What tells one call from another: its content and when it was made (a repeat differs only by the time)."""
    when = _utc(moment).isoformat() if moment is not None else ""
    return hashlib.sha256(f"{content_digest}|{when}".encode()).hexdigest()


class _Merger:
    """Adds records to a collection: a call already collected (same content, same moment) is skipped, a repeat of
    one (same content, another time) is kept, and colliding ids are made unique."""

    def __init__(self, result: CollectResult, same_call_within_s: float) -> None:
        self.result = result
        self.within_s = same_call_within_s
        self.moments: dict[str, list[datetime | None]] = {}
        for record in result.records:
            self.moments.setdefault(content_hash(record), []).append(record.timestamp)
        self.ids = {record.record_id for record in result.records}

    def add(self, record: CallRecord) -> bool:
        digest = content_hash(record)
        seen = self.moments.get(digest, [])
        if any(same_moment(moment, record.timestamp, self.within_s) for moment in seen):
            self.result.duplicates_skipped += 1
            return False
        if seen:
            self.result.repeats_kept += 1
        if record.record_id in self.ids:
            # Two different calls logged under one id: keep both, make the second id unique and say so.
            self.result.duplicate_ids += 1
            new_id = unique_record_id(record.record_id, _call_digest(digest, record.timestamp), self.ids)
            record = record.model_copy(update={"record_id": new_id})
        self.moments.setdefault(digest, []).append(record.timestamp)
        self.ids.add(record.record_id)
        self.result.records.append(record)
        return True


def source_specs(
    cfg: CollectConfig, workdir: Path, cli_sources: Iterable[str] = (), cwd: Path | None = None
) -> list[SourceSpec]:
    """The sources of this run: those given on the command line (relative to ``cwd``), else ``collect.sources``,
    else the single file ``collect.input`` (both relative to the work directory)."""
    cli_sources = list(cli_sources)
    if cli_sources:
        return [parse_source(spec, cwd or Path.cwd()) for spec in cli_sources]
    return [parse_source(spec, workdir) for spec in (cfg.sources or [cfg.input])]


def load_state(path: Path, records_present: bool) -> dict[str, Any]:
    if not records_present or not path.exists():
        return {"version": STATE_VERSION, "sources": {}}
    state = json.loads(path.read_text())
    if state.get("version") != STATE_VERSION:
        return {"version": STATE_VERSION, "sources": {}}
    return state


def write_state(state: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(state, indent=1, sort_keys=True))
    partial.replace(path)
    return path


def collect_sources(
    sources: list[SourceSpec],
    cfg: CollectConfig,
    previous: list[CallRecord] | None = None,
    state: dict[str, Any] | None = None,
    trace_fetcher: Callable[..., list[dict[str, Any]]] | None = None,
) -> CollectResult:
    """Read what is new in each source and merge it into ``previous``; the new state is ``result.state``."""
    result = CollectResult(records=list(previous or []))
    result.previous_records = len(result.records)
    state = state or {"version": STATE_VERSION, "sources": {}}
    result.state = {"version": STATE_VERSION, "sources": dict(state.get("sources", {}))}
    merger = _Merger(result, cfg.same_call_within_s)
    for source in sources:
        batch = read_source(source, cfg, state.get("sources", {}).get(source.key, {}), trace_fetcher)
        added = sum(merger.add(record) for record in batch.records)
        result.new_by_source[source.key] = added
        result.quarantine.extend(batch.quarantine)
        result.state["sources"][source.key] = batch.watermark
    return result


def collect_lines(lines: Iterable[str], cfg: CollectConfig) -> CollectResult:
    """Normalize in-memory JSONL lines (no state, no dedupe by content: every valid call is kept)."""
    batch = read_lines(lines, cfg)
    result = CollectResult(quarantine=batch.quarantine)
    seen_ids: set[str] = set()
    for record in batch.records:
        if record.record_id in seen_ids:
            result.duplicate_ids += 1
            new_id = unique_record_id(record.record_id, content_hash(record), seen_ids)
            record = record.model_copy(update={"record_id": new_id})
        seen_ids.add(record.record_id)
        result.records.append(record)
    return result


def collect_file(path: Path, cfg: CollectConfig) -> CollectResult:
    """Every call of one JSONL log, read from its start."""
    return collect_sources([SourceSpec("jsonl", str(Path(path).resolve()))], cfg)


def write_quarantine(entries: list[QuarantineEntry], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(entry.to_json() + "\n" for entry in entries))
    return path
