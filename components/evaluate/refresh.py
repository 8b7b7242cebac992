"""The refresh loop's bookkeeping, framework-free: config, the state kept between refreshes, stable cluster ids
across a refit (S3's outputs rewritten with them), the fresh held-out split, each cluster's fresh and regression
calls, and which clusters to retrain.

State (``refresh.state``, JSON) after each refresh: its number, the cluster mix and outlier share of all calls
seen (the drift reference of the next refresh), and per cluster the training size of the last challenger, the
champion's last score and the frozen regression set (the held-out calls of the cluster's first evaluation).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.clusters import OUTLIER, ClusterSummary
from components.core.config import StepConfig
from components.core.schema import CallRecord, split_records
from components.evaluate.drift import DriftConfig, cluster_mix

# The order in which a batch's calls are drawn into the fresh held-out set, by origin (others rank 1).
_HELD_OUT_RANK = {"audited": 0, "deferred": 2}


class RetrainPolicy(StepConfig):
    min_new_train_calls: int = 4  # a cluster grew enough when it gained at least this many training calls
    min_new_train_share: float = 0.25  # ... and at least this share of the calls its last challenger trained on
    max_score_drop: float = 0.10  # or when its champion's score fell by more than this on fresh calls


class RefreshConfig(StepConfig):
    history: str = "data/refresh/records.parquet"  # every curated record seen so far
    state: str = "data/refresh/state.json"
    report: str = "reports/refresh.json"
    comparison: str = "reports/comparison.json"
    promotions_log: str = "reports/promotions.jsonl"
    adapters: str = "models/refresh"  # <adapters>/cluster_<id>/refresh_<n>: one folder per challenger
    min_cluster_overlap: float = 0.5  # share of a new cluster's known calls to keep an old id
    max_fresh_test_per_cluster: int = 100  # the gate needs promotion.min_test_calls of them
    drift: DriftConfig = DriftConfig()
    retrain: RetrainPolicy = RetrainPolicy()
    seed: int = 42


def load_state(path: Path) -> dict[str, Any]:
    """The previous refresh's state; an empty state (refresh 0) when there was none."""
    if not path.exists():
        return {"refresh": 0, "mix": {}, "outlier_share": 0.0, "clusters": {}}
    return json.loads(path.read_text())


def run_state(cluster_ids: Iterable[int], trained_on: Mapping[int, int]) -> dict[str, Any]:
    """The state a conversion (``llm2slm run``, ``dvc repro``) leaves for its first refresh: refresh 0, the run's
    cluster mix (``cluster_ids``: its assignments, outliers ``-1``) as the drift reference, so that refresh
    measures drift against what the run converted rather than against nothing, and each cluster the run trained
    with its training size (``trained_on``), so it is retrained only once its data grew (:func:`plan_retraining`)
    and its challenger is not replaced by one trained on the same calls."""
    mix = cluster_mix(cluster_ids)
    return {
        "refresh": 0,
        "mix": mix,
        "outlier_share": float(mix.get("-1", 0.0)),
        "clusters": {str(int(c)): {"trained_on": int(n)} for c, n in trained_on.items()},
    }


def save_state(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2, sort_keys=True))


def match_cluster_ids(
    previous: Mapping[str, int], current: Mapping[str, int], min_overlap: float, keep: Collection[int] = ()
) -> dict[int, int]:
    """Map each cluster id of a refit to a stable id, largest cluster first: a previous cluster that holds at least
    ``min_overlap`` of its already-known calls, or of whose own known calls at least ``min_overlap`` are in it (a
    task the refit merged from several: S3's ``api`` split), not claimed by a larger new cluster; among several, one
    of ``keep`` first (the clusters with a trained model, so their challenger and champion carry over), then the one
    sharing most calls. Otherwise a fresh id above every id used before. Outliers stay -1."""
    members: dict[int, list[str]] = {}
    for record_id, cluster_id in current.items():
        if cluster_id != OUTLIER:
            members.setdefault(int(cluster_id), []).append(record_id)
    old_sizes = Counter(int(c) for c in previous.values() if c != OUTLIER)
    used = {int(c) for c in previous.values() if c != OUTLIER}
    next_id = max(used, default=-1) + 1
    mapping: dict[int, int] = {OUTLIER: OUTLIER}
    taken: set[int] = set()
    for cluster_id in sorted(members, key=lambda c: (-len(members[c]), c)):
        known = Counter(int(previous[r]) for r in members[cluster_id] if r in previous and previous[r] != OUTLIER)
        seen = sum(1 for r in members[cluster_id] if r in previous)
        matches = [
            old
            for old, count in known.items()
            if old not in taken and (count / seen >= min_overlap or count / old_sizes[old] >= min_overlap)
        ]
        if matches:
            best = max(matches, key=lambda old: (old in keep, known[old], -old))
            mapping[cluster_id] = best
            taken.add(best)
        else:
            mapping[cluster_id] = next_id
            next_id += 1
    return mapping


def refresh_splits(
    assignments: pd.DataFrame,
    batch_ids: set[str],
    regression: Mapping[int, list[str]],
    max_fresh_test: int,
    seed: int,
    refresh_number: int,
    carried: Mapping[int, list[str]] | None = None,
    origins: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Splits for a refresh: a cluster's frozen regression set is never trained on (split ``regression``); up to
    ``max_fresh_test`` calls of the new batch are the fresh held-out set (``test``), drawn with a seeded
    generator; every other call is ``train``; outliers stay ``outlier``. ``carried``: per cluster, the held-out
    calls of earlier refreshes too few for a gate decision (:func:`next_state`); they stay held out, first in the
    fresh set, so the set accumulates across batches until it is large enough. ``origins`` (record id ->
    ``metadata.origin``): the router's audited calls are drawn first (an unbiased sample of what the SLM kept: the
    threshold is recalibrated on them and the other held-out calls), its deferred calls last, so they train
    (the SLM learns what it did not know) and never make up the held-out set alone."""
    regression_ids = {r for ids in regression.values() for r in ids}
    carried_ids = {r for ids in (carried or {}).values() for r in ids} - regression_ids
    split_of: dict[str, str] = {}
    for cluster_id, group in assignments.groupby("cluster_id"):
        ids = sorted(group.record_id)
        if cluster_id == OUTLIER:
            split_of.update({r: "outlier" for r in ids})
            continue
        kept = [r for r in ids if r in carried_ids]
        fresh = [r for r in ids if r in batch_ids and r not in regression_ids and r not in carried_ids]
        order = np.random.default_rng([seed, refresh_number, int(cluster_id)]).permutation(len(fresh))
        draw = sorted(order, key=lambda i: _HELD_OUT_RANK.get((origins or {}).get(fresh[i], ""), 1))  # stable
        # A cluster keeps at least one training call.
        n_test = min(max_fresh_test, len(kept) + len(fresh), max(len(ids) - 1, 0))
        test = set(kept[:n_test]) | {fresh[i] for i in draw[: max(n_test - len(kept), 0)]}
        for r in ids:
            split_of[r] = "regression" if r in regression_ids else "test" if r in test else "train"
    return pd.DataFrame(
        {
            "record_id": assignments.record_id,
            "cluster_id": assignments.cluster_id.astype(int),
            "split": [split_of[r] for r in assignments.record_id],
        }
    )


@dataclass
class StableClusters:
    """S3's outputs under stable ids: what the task writes back, and ``summary``, what the later refresh tasks read
    (mixes, the id mapping, training sizes, fresh test and regression ids, the clusters)."""

    assignments: pd.DataFrame
    splits: pd.DataFrame
    clusters: list[ClusterSummary]
    summary: dict[str, Any]


def stabilize_clusters(
    assignments: pd.DataFrame,
    clusters: list[ClusterSummary],
    splits: pd.DataFrame,
    previous: Mapping[str, int],
    state: Mapping[str, Any],
    batch_ids: list[str],
    cfg: RefreshConfig,
    origins: Mapping[str, str] | None = None,
) -> StableClusters:
    """Rewrite S3's assignments, clusters and splits with stable cluster ids (``previous``: the last refresh's
    record id -> cluster id, matched by :func:`match_cluster_ids`) and the refresh's splits: on the first refresh
    S3's own split (its test calls become the regression sets), later :func:`refresh_splits` (frozen regression
    sets, fresh held-out calls from the batch, audited calls first and deferred ones last by ``origins``)."""
    known = state.get("clusters", {})
    trained = {int(c) for c, entry in known.items() if entry.get("trained_on") is not None}
    mapping = match_cluster_ids(
        previous,
        dict(assignments[["record_id", "cluster_id"]].itertuples(index=False)),
        cfg.min_cluster_overlap,
        trained,
    )
    assignments = assignments.assign(cluster_id=assignments.cluster_id.map(mapping).astype(int))
    renamed = []
    for cluster in clusters:
        cluster_id = mapping[cluster.cluster_id]
        # A cluster with a trained model stays in the conversion, even if others outgrew it.
        convert = cluster.convert or bool(known.get(str(cluster_id), {}).get("trained_on"))
        renamed.append(cluster.model_copy(update={"cluster_id": cluster_id, "convert": convert}))
    clusters = renamed
    regression = {int(k): v["regression_ids"] for k, v in known.items() if v.get("regression_ids")}
    if state.get("refresh", 0) == 0:
        splits = splits.assign(cluster_id=splits.cluster_id.map(mapping).astype(int))
    else:
        splits = refresh_splits(
            assignments,
            set(batch_ids),
            regression,
            cfg.max_fresh_test_per_cluster,
            cfg.seed,
            int(state.get("refresh", 0)) + 1,
            {int(k): v["pending_test_ids"] for k, v in known.items() if v.get("pending_test_ids")},
            origins,
        )
    in_batch = assignments[assignments.record_id.isin(set(batch_ids))]
    summary = {
        "mix_all": cluster_mix(assignments.cluster_id),
        "mix_batch": cluster_mix(in_batch.cluster_id),
        "id_mapping": {str(k): v for k, v in mapping.items()},
        "train_sizes": {int(c): int(n) for c, n in splits[splits.split == "train"].cluster_id.value_counts().items()},
        "test_ids": {int(c): sorted(g.record_id) for c, g in splits[splits.split == "test"].groupby("cluster_id")},
        "regression_ids": regression,
        "clusters": clusters,
    }
    return StableClusters(assignments, splits, clusters, summary)


def fresh_and_regression_calls(
    records: Mapping[str, CallRecord],
    splits: pd.DataFrame,
    regression_ids: Mapping[int | str, list[str]],
    cluster_id: int,
) -> tuple[list[CallRecord], list[CallRecord]]:
    """A cluster's fresh held-out calls (split ``test``) and its regression set (``regression_ids`` is keyed by
    the id as a number, or as a string once it went through JSON)."""
    ids = regression_ids.get(cluster_id) or regression_ids.get(str(cluster_id), [])
    return split_records(records, splits, cluster_id, "test"), [records[r] for r in ids if r in records]


def plan_retraining(
    clusters: list[ClusterSummary],
    state_clusters: Mapping[str, dict[str, Any]],
    train_sizes: Mapping[int, int],
    champion_scores: Mapping[int, float],
    policy: RetrainPolicy,
    demoted: Collection[int] = (),
) -> dict[int, str]:
    """Clusters to (re)train, with the reason: a convertible cluster never trained; one the router ``demoted``
    (its audited calls fell below parity: components/evaluate/demotion.py); one whose training data grew
    by at least ``min_new_train_calls`` and ``min_new_train_share``; one whose champion's fresh score fell by more
    than ``max_score_drop`` from its last recorded score."""
    plan: dict[int, str] = {}
    for cluster in clusters:
        cluster_id = cluster.cluster_id
        known = state_clusters.get(str(cluster_id))
        size = train_sizes.get(cluster_id, 0)
        if cluster_id in demoted and size:
            plan[cluster_id] = f"demoted by the router: audited calls below parity ({size} training calls)"
            continue
        if not known or known.get("trained_on") is None:
            if cluster.convert:
                plan[cluster_id] = f"new cluster ({size} training calls)"
            continue
        grown = size - int(known["trained_on"])
        if grown >= policy.min_new_train_calls and grown >= policy.min_new_train_share * int(known["trained_on"]):
            plan[cluster_id] = f"data grew: {known['trained_on']} -> {size} training calls"
            continue
        last, now = known.get("champion_score"), champion_scores.get(cluster_id)
        if last is not None and now is not None and last - now > policy.max_score_drop:
            plan[cluster_id] = f"champion score dropped: {last:.3f} -> {now:.3f}"
    return plan


def next_state(
    state: Mapping[str, Any],
    mix: Mapping[str, float],
    trained_on: Mapping[int, int],
    champion_scores: Mapping[int, float],
    evaluated_test_ids: Mapping[int, list[str]],
    min_test_calls: int = 0,
) -> dict[str, Any]:
    """The state after a refresh: the new reference mix, and per cluster the training size of its latest
    challenger, its champion's latest score, its regression set (frozen at its first evaluation) and, when its
    fresh held-out set was smaller than ``min_test_calls`` (no gate decision), those calls as
    ``pending_test_ids``: the next refresh keeps them held out and adds its batch's (:func:`refresh_splits`)."""
    clusters = {key: dict(value) for key, value in state.get("clusters", {}).items()}
    for cluster_id in set(trained_on) | set(champion_scores) | set(evaluated_test_ids):
        entry = clusters.setdefault(str(cluster_id), {})
        if cluster_id in trained_on:
            entry["trained_on"] = int(trained_on[cluster_id])
        if cluster_id in champion_scores:
            entry["champion_score"] = float(champion_scores[cluster_id])
        if not entry.get("regression_ids") and evaluated_test_ids.get(cluster_id):
            entry["regression_ids"] = sorted(evaluated_test_ids[cluster_id])
        elif cluster_id in evaluated_test_ids:
            pending = sorted(set(evaluated_test_ids[cluster_id]) - set(entry.get("regression_ids", [])))
            if 0 < len(pending) < min_test_calls:
                entry["pending_test_ids"] = pending
            else:
                entry.pop("pending_test_ids", None)  # a decision was made on them: later batches start afresh
    return {
        "refresh": int(state.get("refresh", 0)) + 1,
        "mix": dict(mix),
        "outlier_share": float(mix.get("-1", 0.0)),
        "clusters": clusters,
    }


def coverage_by_cluster(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per evaluated cluster, what the refresh report shows of its selective serving: each SLM's coverage and
    accepted accuracy recalibrated on the fresh held-out calls, and the share each serves at parity."""
    found = {}
    for entry in entries:
        selective = entry.get("selective") or {}
        found[str(entry["cluster_id"])] = {
            "mode": entry.get("mode"),
            "served_at_parity": entry.get("served_at_parity") or {},
            **{
                f"{system}_{key}": figures.get(key)
                for system, figures in selective.items()
                for key in ("coverage", "accepted_accuracy", "threshold")
            },
        }
    return found


def champion_scores_after(champions: Mapping[int, dict[str, Any]], entries: list[dict[str, Any]]) -> dict[int, float]:
    """Each cluster's champion score on this refresh's fresh calls: the promoted challenger's where the gate
    promoted one, else the standing champion's."""
    scores = {int(cid): float(result["scores"][result["primary_metric"]]) for cid, result in champions.items()}
    for entry in entries:
        if entry["promoted"]:
            scores[int(entry["cluster_id"])] = float(entry["systems"]["challenger"]["score"])
    return scores
