"""S3 on multi-turn agent logs: are the tasks the size of a task, the same at twice the volume, and do they keep
their ids across a refresh? (issue 29)

    python benchmarks/discover_tasks.py                                    # the demo's multi_turn_base log
    python benchmarks/discover_tasks.py --category multi_turn_miss_param --no-volume

A log is built as the demo builds it (:mod:`components.collect.demo_agent`, without PII or malformed lines) from
BFCL's ``--category`` conversations, and S3 runs on it with params.yaml's ``discover:`` section. Truth: the API
class of the called tool (8 classes), a text answer its own group ``text``. Printed as JSON:

- ``quality`` (``--conversations``, default the demo's 120): homogeneity and completeness vs the API class over the
  clustered calls, the outlier share, the clusters (candidates), and S3's own request-only check
  (``identity_check``: the router's placement of calls held out of the model vs the fit's own rule for them);
- ``volume`` (``--volume-conversations``, default 100, and twice that): a fit on the 1x log (a seeded half of the
  2x log's conversations) and one on the 2x log given the 1x model (as a refresh with twice the history refits):
  ARI on the shared calls (outliers as one group, and over calls clustered in both), the task counts, and the id
  retention: the share of the calls clustered in the 1x fit that keep their task id after S3's ``stable_ids`` and
  after the refresh's :func:`components.evaluate.refresh.match_cluster_ids`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score, completeness_score, homogeneity_score

import components.collect.demo_agent as demo_agent
from benchmarks.discover_data import CACHE
from components.collect.demo_data import DemoDataConfig
from components.collect.ingest import CollectConfig, collect_lines
from components.core.config import load_params, load_section
from components.core.schema import CallRecord
from components.discover.clustering import OUTLIER
from components.discover.discovery import DiscoverConfig, discover, embed_records
from components.discover.task_keys import TEXT_KEY
from components.evaluate.refresh import match_cluster_ids


def agent_log(category: str, conversations: int, seed: int = 42) -> tuple[list[CallRecord], list[str], list[str]]:
    """Records of an agent log over BFCL's ``category``, each call's truth (API class or ``text``) and its
    conversation."""
    demo_agent.CATEGORY = category  # the builder reads BFCL_v4_<CATEGORY>.json
    cfg = DemoDataConfig(kind="agent", conversations=conversations, pii_share=0.0, malformed_lines=0, seed=seed)
    lines, groups = demo_agent.build_agent_log(cfg)
    records = collect_lines(lines, CollectConfig()).records
    by_id = {g["record_id"]: g for g in groups}
    truth = [TEXT_KEY if not r.response.tool_calls else by_id[r.record_id]["task"] for r in records]
    return records, truth, [by_id[r.record_id]["conversation"] for r in records]


def quality(truth: list[str], labels: np.ndarray) -> dict[str, float]:
    truth_array, labels = np.asarray(truth), np.asarray(labels)
    placed = labels != OUTLIER
    return {
        "calls": len(truth),
        "homogeneity": round(homogeneity_score(truth_array[placed], labels[placed]), 3),
        "completeness": round(completeness_score(truth_array[placed], labels[placed]), 3),
        "outlier_share": round(float(np.mean(~placed)), 3),
    }


def fit(records, embeddings, cfg, previous=None):
    started = time.perf_counter()
    result = discover(records, cfg, embeddings=embeddings, previous=previous)
    return result, result.assignments.cluster_id.to_numpy(), round(time.perf_counter() - started, 1)


def summary(result, truth, labels, seconds) -> dict:
    sizes = np.bincount(labels[labels != OUTLIER]) if (labels != OUTLIER).any() else np.array([])
    return {
        **quality(truth, labels),
        "fit_seconds": seconds,
        "clusters": len(result.clusters),
        "candidates": sum(c.candidate for c in result.clusters),
        "median_cluster_calls": float(np.median(sizes[sizes > 0])) if len(sizes) else 0.0,
        "task_split": result.task_split,
        "identity_check": result.identity_check,
        "outlier_reasons": result.outlier_reasons,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="multi_turn_base")
    parser.add_argument("--conversations", type=int, default=120)
    parser.add_argument("--volume-conversations", type=int, default=100)
    parser.add_argument("--no-volume", action="store_true")
    args = parser.parse_args()
    cfg = load_section(load_params(), "discover", DiscoverConfig)
    report: dict = {"category": args.category}
    records, truth, _ = agent_log(args.category, args.conversations)
    embeddings, embedded_now = embed_records(records, cfg, CACHE)
    result, labels, seconds = fit(records, embeddings, cfg)
    report["quality"] = {"conversations": args.conversations, "texts_embedded_now": embedded_now}
    report["quality"] |= summary(result, truth, labels, seconds)
    print(json.dumps(report, indent=2), flush=True)
    if args.no_volume:
        return
    records2, truth2, conversations2 = agent_log(args.category, 2 * args.volume_conversations)
    embeddings2, _ = embed_records(records2, cfg, CACHE)
    names = sorted(set(conversations2))
    half = set(np.random.default_rng(cfg.seed).choice(names, len(names) // 2, replace=False).tolist())
    rows1 = np.flatnonzero([c in half for c in conversations2])
    records1 = [records2[i] for i in rows1]
    first, labels1, seconds1 = fit(records1, embeddings2[rows1], cfg)
    second, labels2, seconds2 = fit(records2, embeddings2, cfg, previous=first.model)
    shared = labels2[rows1]
    both = (labels1 != OUTLIER) & (shared != OUTLIER)
    # The refresh's matching (stabilize_clusters) on top of S3's stable ids: previous run's ids by record.
    previous = {records1[i].record_id: int(labels1[i]) for i in range(len(records1))}
    current = {r.record_id: int(label) for r, label in zip(records2, labels2)}
    mapping = match_cluster_ids(previous, current, 0.5)
    refreshed = np.array([mapping[int(label)] for label in shared])
    clustered1 = labels1 != OUTLIER
    report["volume"] = {
        "calls_1x": len(records1),
        "calls_2x": len(records2),
        "fit_1x": summary(first, [truth2[i] for i in rows1], labels1, seconds1),
        "fit_2x": summary(second, truth2, labels2, seconds2),
        "ari_shared_calls": round(adjusted_rand_score(labels1, shared), 3),
        "ari_clustered_in_both": round(adjusted_rand_score(labels1[both], shared[both]), 3),
        "tasks_1x": len(first.clusters),
        "tasks_2x": len(second.clusters),
        "id_retention_stable_ids": round(float(np.mean(shared[clustered1] == labels1[clustered1])), 3),
        "id_retention_after_refresh_matching": round(float(np.mean(refreshed[clustered1] == labels1[clustered1])), 3),
    }
    print(json.dumps(report["volume"], indent=2))


if __name__ == "__main__":
    main()
