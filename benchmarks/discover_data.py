"""Shared by the discover_* benchmarks: the demo builder's calls as S1 records, their known groups, and their task
embeddings (through an embedding cache, so the benchmarks embed each text once across runs).

No anonymization step: the benchmark logs are built without synthetic PII (``pii_share=0``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.collect.demo_data import DemoDataConfig, build_demo_log
from components.collect.ingest import CollectConfig, collect_lines
from components.core.schema import CallRecord
from components.discover.discovery import DiscoverConfig, embed_records

CACHE = Path("runs/benchmarks/embeddings")


def demo_records(categories: list[str], max_records: int, seed: int = 42) -> tuple[list[CallRecord], list[dict]]:
    """S1 records of a demo log over ``categories`` and the known groups of each (aligned by record id)."""
    cfg = DemoDataConfig(
        kind="bfcl", categories=categories, max_records=max_records, pii_share=0.0, malformed_lines=0, seed=seed
    )
    lines, groups = build_demo_log(cfg)
    records = collect_lines(lines, CollectConfig()).records
    by_id = {group["record_id"]: group for group in groups}
    missing = [r.record_id for r in records if r.record_id not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} records have no known group, e.g. {missing[0]}")
    return records, [by_id[r.record_id] for r in records]


def embeddings_for(records: list[CallRecord], cfg: DiscoverConfig, cache: Path = CACHE) -> np.ndarray:
    embeddings, embedded_now = embed_records(records, cfg, cache)
    print(json.dumps({"calls": len(records), "texts_embedded_now": embedded_now}))
    return embeddings
