"""S1 sources: one reader per place agent logs live, all giving the same CallRecord.

A source is named by a spec string (``llm2slm collect --source SPEC``, repeatable, or ``collect.sources`` in
params.yaml):

=====================================  ==============================================================================
``PATH`` or ``jsonl:PATH``             OpenAI request/response JSONL (also streamed chunk lists) or fine-tuning/chat
                                       JSONL; a directory means every ``*.jsonl`` in it
``proxy-store:DIR``                    the encrypted store of ``llm2slm proxy``
``mlflow:URI#EXPERIMENT``              chat/LLM spans of an MLflow experiment's traces; a time window may follow:
                                       ``#EXPERIMENT?since=2026-11-01T00:00:00Z&until=2026-11-02T00:00:00Z``
``mapped:NAME:PATH``                   generic JSONL or Parquet, fields named by ``collect.mappings.NAME``
=====================================  ==============================================================================

Relative paths are taken from ``base_dir`` (the work directory for params, the current directory on the CLI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from components.collect.config import CollectConfig
from components.collect.sources.common import SourceBatch, SourceError
from components.collect.sources.mapped import read_mapped
from components.collect.sources.mlflow_traces import read_mlflow
from components.collect.sources.openai_jsonl import read_jsonl_files
from components.collect.sources.proxy_store import read_proxy_store

SOURCE_KINDS = ("jsonl", "proxy-store", "mlflow", "mapped")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    location: str  # a resolved path, or the MLflow tracking URI
    experiment: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    mapping: str | None = None

    @property
    def key(self) -> str:
        """The source's identity in the watermark state."""
        if self.kind == "mlflow":
            return f"mlflow:{self.location}#{self.experiment}"
        if self.kind == "mapped":
            return f"mapped:{self.mapping}:{self.location}"
        return f"{self.kind}:{self.location}"


def _epoch_ms(value: str, spec: str) -> int:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SourceError(f"source '{spec}': '{value}' is not an ISO date/time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_source(spec: str, base_dir: Path) -> SourceSpec:
    kind, _, rest = spec.partition(":")
    if kind not in SOURCE_KINDS or not rest:
        kind, rest = "jsonl", spec  # a bare path (also Windows-free absolute paths)
    if kind == "mlflow":
        uri, _, fragment = rest.partition("#")
        experiment, _, query = fragment.partition("?")
        if not uri or not experiment:
            raise SourceError(f"source '{spec}': expected mlflow:TRACKING_URI#EXPERIMENT")
        window = {key: values[-1] for key, values in parse_qs(query).items()}
        unknown = set(window) - {"since", "until"}
        if unknown:
            raise SourceError(f"source '{spec}': unknown option(s) {sorted(unknown)}; use since= and until=")
        return SourceSpec(
            "mlflow",
            uri,
            experiment,
            _epoch_ms(window["since"], spec) if "since" in window else None,
            _epoch_ms(window["until"], spec) if "until" in window else None,
        )
    if kind == "mapped":
        mapping, _, path = rest.partition(":")
        if not mapping or not path:
            raise SourceError(f"source '{spec}': expected mapped:MAPPING_NAME:PATH")
        return SourceSpec("mapped", str((base_dir / path).resolve()), mapping=mapping)
    return SourceSpec(kind, str((base_dir / rest).resolve()))


def read_source(
    source: SourceSpec,
    cfg: CollectConfig,
    watermark: dict[str, Any],
    trace_fetcher: Callable[..., list[dict[str, Any]]] | None = None,
) -> SourceBatch:
    """Read what is new in one source since ``watermark``; raises SourceError when the source is unreadable."""
    location = Path(source.location)
    if source.kind == "jsonl":
        if location.is_dir():
            paths = sorted(location.glob("*.jsonl"))
        elif location.is_file():
            paths = [location]
        else:
            raise SourceError(f"input log not found: {location}")
        return read_jsonl_files(paths, cfg, source.key, watermark)
    if source.kind == "proxy-store":
        return read_proxy_store(location, cfg, source.key, watermark)
    if source.kind == "mapped":
        return read_mapped(location, source.mapping or "", cfg, source.key, watermark)
    if trace_fetcher is None:
        raise SourceError("MLflow sources need a trace fetcher (run them through `llm2slm collect`)")
    return read_mlflow(
        source.location,
        source.experiment or "",
        source.since_ms,
        source.until_ms,
        cfg,
        source.key,
        watermark,
        trace_fetcher,
    )


__all__ = ["SOURCE_KINDS", "SourceBatch", "SourceError", "SourceSpec", "parse_source", "read_source"]
