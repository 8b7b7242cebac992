"""S1 collect: read the agent's logged LLM calls from their sources (JSONL, the proxy's store, MLflow traces, mapped
files) into call records, incrementally, with a quarantine for bad lines; and the demo agent log. Imports core and
scoring.tool_calls only (never a later step)."""

from components.collect.config import CollectConfig
from components.collect.demo_data import DemoDataConfig, write_demo_calls
from components.collect.ingest import collect_sources, source_specs
from components.collect.sources import SourceError, parse_source

__all__ = [
    "CollectConfig",
    "DemoDataConfig",
    "SourceError",
    "collect_sources",
    "parse_source",
    "source_specs",
    "write_demo_calls",
]
