"""Refresh tasks before training: merge the new batch into the history, give the refit's clusters stable ids and
fresh held-out splits, measure drift, score the current champions on the fresh calls, and plan the retraining.

`stabilize_clusters_task` is the seam where S3's assignment of new calls to the saved clusters (without a refit)
plugs in: today the flow refits (S3 `discover_task`) and this task maps the new cluster ids onto the old ones.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core import artifacts
from components.core.clusters import cluster_table_json, read_cluster_table, registered_name
from components.core.config import resolve
from components.core.schema import CallRecord, read_records, write_records, write_table
from components.discover.discovery import DiscoverConfig
from components.evaluate.comparison import score_fresh_and_regression
from components.evaluate.demotion import audited_by_cluster
from components.evaluate.drift import describe_drift, detect_drift
from components.evaluate.evaluation import EvaluateConfig
from components.evaluate.refresh import (
    RefreshConfig,
    fresh_and_regression_calls,
    plan_retraining,
    run_state,
    save_state,
    stabilize_clusters,
)
from components.finetune.train import FinetuneConfig
from components.scoring.metrics import PRIMARY_METRIC
from components.slm.generation import generate_answers
from tasks.helpers.progress import Progress, say
from tasks.helpers.registry import adapter_of_version, champion_version
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run

STABLE_ASSIGNMENTS = "assignments.parquet"  # beside the state file: the last refresh's stable cluster ids


@task(name="refresh: seed history", cache_policy=NO_CACHE)
def seed_history_task(
    cfg: RefreshConfig, curated: str, assignments: str, workdir: Path, finetune_summary: str | None = None
) -> bool:
    """Before the first refresh of a work dir that already holds a conversion (`llm2slm run`): its curated calls
    start the history and its clusters the stable ids, so its registered champions keep meaning the same task; its
    cluster mix becomes the drift reference and its trained clusters' sizes (``finetune_summary``, S5's report)
    the state the refresh plans from (:func:`components.evaluate.refresh.run_state`)."""
    history, stable = resolve(workdir, cfg.history), resolve(workdir, cfg.state).parent / STABLE_ASSIGNMENTS
    if history.exists() or not resolve(workdir, curated).exists():
        return False
    write_records(read_records(resolve(workdir, curated)), history)
    if resolve(workdir, assignments).exists():
        run_assignments = pd.read_parquet(resolve(workdir, assignments))
        if not stable.exists():
            write_table(run_assignments, stable)
        state_path = resolve(workdir, cfg.state)
        summary = resolve(workdir, finetune_summary) if finetune_summary else None
        trained = (
            artifacts.read(artifacts.FINETUNE_SUMMARY, workdir, finetune_summary).clusters
            if summary and summary.exists()
            else []
        )
        if not state_path.exists():
            trained_on = {c.cluster_id: c.n_train for c in trained}
            save_state(run_state(run_assignments.cluster_id, trained_on), state_path)
    say(f"refresh: history seeded from the previous conversion's {curated}")
    return True


@task(name="refresh: merge batch", cache_policy=NO_CACHE)
def merge_batch_task(
    cfg: RefreshConfig,
    curated: str,
    workdir: Path,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> list[str]:
    """Append the batch's curated calls to the history and make the history the curated set S3-S6 read.
    Returns the ids of the calls this batch added (a call seen before is not new)."""
    with step_run("merge", cfg, workdir, tracking, parent_run_id):
        batch = read_records(resolve(workdir, curated))
        history_path = resolve(workdir, cfg.history)
        history = read_records(history_path) if history_path.exists() else []
        known = {r.record_id for r in history}
        new = [r for r in batch if r.record_id not in known]
        merged = history + new
        write_records(merged, history_path)
        write_records(merged, resolve(workdir, curated))
        log_numeric_metrics(
            {
                "batch_records": len(batch),
                "new_records": len(new),
                "already_seen": len(batch) - len(new),
                "history_records": len(merged),
            }
        )
    say(f"refresh: {len(new)} new calls ({len(batch) - len(new)} seen before), {len(merged)} in the history")
    return [r.record_id for r in new]


@task(name="refresh: stable clusters", cache_policy=NO_CACHE)
def stabilize_clusters_task(
    discover_cfg: DiscoverConfig,
    cfg: RefreshConfig,
    workdir: Path,
    state: dict,
    batch_ids: list[str],
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Rewrite S3's outputs with stable cluster ids (the previous refresh's, matched by shared calls) and the
    refresh's splits (frozen regression sets, fresh held-out calls from the batch); returns the mixes."""
    with step_run("stable_clusters", cfg, workdir, tracking, parent_run_id):
        assignments = pd.read_parquet(resolve(workdir, discover_cfg.assignments))
        clusters = read_cluster_table(resolve(workdir, discover_cfg.clusters))
        splits = pd.read_parquet(resolve(workdir, discover_cfg.splits))
        stable_path = resolve(workdir, cfg.state).parent / STABLE_ASSIGNMENTS
        previous = (
            dict(pd.read_parquet(stable_path)[["record_id", "cluster_id"]].itertuples(index=False))
            if stable_path.exists()
            else {}
        )
        # The router's audited and deferred calls (metadata.origin) decide which of the batch's calls are held out.
        history = read_records(resolve(workdir, cfg.history))
        origins = {r.record_id: str(r.metadata["origin"]) for r in history if r.metadata.get("origin")}
        stable = stabilize_clusters(assignments, clusters, splits, previous, state, batch_ids, cfg, origins)
        write_table(stable.assignments, resolve(workdir, discover_cfg.assignments))
        write_table(stable.splits, resolve(workdir, discover_cfg.splits))
        log_json_artifact(cluster_table_json(stable.clusters), resolve(workdir, discover_cfg.clusters))
        write_table(stable.assignments, stable_path)
        result = stable.summary
        # The batch's audited calls (the router's audit stream): the refresh report's audited accuracy per cluster.
        batch = set(batch_ids)
        result["audited"] = audited_by_cluster(r for r in history if r.record_id in batch)
        mlflow.log_dict(
            {"id_mapping": result["id_mapping"], "mix_all": result["mix_all"], "mix_batch": result["mix_batch"]},
            "clusters_mix.json",
        )
    return result


@task(name="refresh: drift", cache_policy=NO_CACHE)
def drift_task(
    cfg: RefreshConfig,
    workdir: Path,
    state: dict,
    clusters: dict,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """PSI of the batch's cluster mix against the previous refresh's mix, and the outlier share change."""
    with step_run("drift", cfg.drift, workdir, tracking, parent_run_id):
        report = detect_drift(state.get("mix", {}), clusters["mix_batch"], cfg.drift).to_dict()
        log_numeric_metrics({k: v for k, v in report.items() if k != "reasons"})
        mlflow.log_dict(
            {**report, "reference_mix": state.get("mix", {}), "batch_mix": clusters["mix_batch"]}, "drift.json"
        )
    say(f"refresh drift: {describe_drift(report)}")
    return report


def answer_and_score(
    base_model: str,
    adapter_dir: str,
    fresh: list[CallRecord],
    regression: list[CallRecord],
    kind: str,
    cfg: EvaluateConfig,
    label: str,
) -> dict[str, Any]:
    """One model's scores on the fresh held-out calls and on the regression set (one generation pass)."""
    calls = fresh + regression
    answers = generate_answers(
        base_model,
        calls,
        cfg.max_new_tokens,
        cfg.batch_size,
        Progress(label, len(calls)),
        adapter_dir=adapter_dir,
        constrain_tool_calls=cfg.constrained_decoding,
        with_confidence=True,  # a selective champion and its challenger are compared on calls served at parity
    )
    return score_fresh_and_regression(fresh, regression, answers, kind)


def cluster_calls(
    workdir: Path, cfg: EvaluateConfig, clusters: dict, cluster_id: int
) -> tuple[list[CallRecord], list[CallRecord]]:
    """A cluster's fresh held-out calls and its regression set, read from the work dir."""
    records = {r.record_id: r for r in read_records(resolve(workdir, cfg.curated))}
    splits = pd.read_parquet(resolve(workdir, cfg.splits))
    return fresh_and_regression_calls(records, splits, clusters["regression_ids"], cluster_id)


@task(name="refresh: score champions", cache_policy=NO_CACHE)
def champion_scores_task(
    cfg: EvaluateConfig,
    workdir: Path,
    clusters: dict,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> dict[int, dict]:
    """Each current champion (registry alias) answers its cluster's fresh held-out calls and regression set."""
    results: dict[int, dict] = {}
    with step_run("champions", cfg, workdir, tracking, parent_run_id), tempfile.TemporaryDirectory() as scratch:
        for cluster in clusters["clusters"]:
            cluster_id, kind = cluster.cluster_id, cluster.output_kind
            name = registered_name(cfg.registered_model_prefix, cluster_id)
            version = champion_version(name)
            fresh, regression = cluster_calls(workdir, cfg, clusters, cluster_id)
            if version is None or not fresh:
                continue
            adapter_dir, base_model = adapter_of_version(name, version, Path(scratch) / f"{name}-{version}")
            result = answer_and_score(
                base_model, adapter_dir, fresh, regression, kind, cfg, f"champion #{cluster_id} v{version}"
            )
            results[cluster_id] = {
                "version": version,
                "base_model": base_model,
                "primary_metric": PRIMARY_METRIC[kind],
                **result,
            }
            log_numeric_metrics({f"cluster_{cluster_id}": {"champion": result["scores"]}})
            say(
                f"refresh: champion {name} v{version}: {PRIMARY_METRIC[kind]} "
                f"{result['scores'][PRIMARY_METRIC[kind]]:.3f} on {len(fresh)} fresh calls"
            )
    return results


@task(name="refresh: plan retraining", cache_policy=NO_CACHE)
def plan_task(
    cfg: RefreshConfig,
    state: dict,
    clusters: dict,
    champions: dict[int, dict],
    parent_run_id: str | None = None,
    demoted: list[int] | None = None,
) -> dict[int, str]:
    """Which clusters get a new challenger, and why (also a tag set on the refresh's parent run)."""
    primary = {c.cluster_id: PRIMARY_METRIC[c.output_kind] for c in clusters["clusters"]}
    fresh_scores = {cid: result["scores"][primary[cid]] for cid, result in champions.items()}
    plan = plan_retraining(
        clusters["clusters"],
        state.get("clusters", {}),
        clusters["train_sizes"],
        fresh_scores,
        cfg.retrain,
        demoted or (),
    )
    if parent_run_id:
        MlflowClient().log_dict(parent_run_id, {str(k): v for k, v in plan.items()}, "retrain_plan.json")
        MlflowClient().set_tag(parent_run_id, "llm2slm.retrained_clusters", ",".join(map(str, sorted(plan))) or "none")
    for cluster_id, reason in sorted(plan.items()):
        say(f"refresh: retrain cluster #{cluster_id}: {reason}")
    return plan


@task(name="refresh: retraining config", cache_policy=NO_CACHE)
def retraining_config_task(
    cfg: FinetuneConfig, refresh_cfg: RefreshConfig, workdir: Path, plan: dict[int, str], refresh_number: int
) -> FinetuneConfig:
    """S5's config for this refresh: only the planned clusters (a filtered copy of S4's leaderboard), each
    challenger in its own folder so the champion's files are never overwritten."""
    leaderboard = artifacts.read(artifacts.LEADERBOARD, workdir, cfg.leaderboard)
    leaderboard.clusters = [c for c in leaderboard.clusters if c.cluster_id in plan]
    planned = resolve(workdir, refresh_cfg.state).parent / f"leaderboard_refresh_{refresh_number}.json"
    artifacts.write(artifacts.LEADERBOARD, leaderboard, workdir, str(planned))
    return cfg.model_copy(
        update={
            "leaderboard": str(planned),
            "output_dir": str(Path(refresh_cfg.adapters) / f"refresh_{refresh_number}"),
            "summary": str(Path(refresh_cfg.report).with_name(f"finetune_refresh_{refresh_number}.json")),
        }
    )
