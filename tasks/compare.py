"""Refresh S6: each new challenger against its cluster's champion and the LLM on the same fresh held-out calls,
the promotion gate, the registry aliases, and the comparison view (table + quality-vs-cost plot) in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core.clusters import registered_name
from components.core.config import resolve
from components.evaluate.comparison import (
    COMPARISON_COLUMNS,
    comparison_entry,
    comparison_rows,
    judge_challenger,
    quality_cost_plot,
    selected_base_result,
)
from components.evaluate.evaluation import EvaluateConfig
from components.evaluate.promotion import PromotionPolicy
from components.evaluate.promotion_log import append_promotion_events
from components.evaluate.refresh import RefreshConfig
from tasks.helpers.progress import say
from tasks.helpers.registry import register_challenger
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run
from tasks.refresh import answer_and_score, cluster_calls


@task(name="refresh: compare and promote", cache_policy=NO_CACHE)
def compare_task(
    cfg: EvaluateConfig,
    refresh_cfg: RefreshConfig,
    policy: PromotionPolicy,
    workdir: Path,
    refresh_number: int,
    clusters: dict,
    trained: dict,
    champions: dict[int, dict],
    leaderboard: dict | None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Score, gate, register (alias challenger) and promote (alias champion) each trained challenger."""
    by_id = {c.cluster_id: c for c in clusters["clusters"]}  # S3's cluster table (ClusterSummary rows)
    base_of = {int(c["cluster_id"]): c for c in (leaderboard or {}).get("clusters", [])}
    entries: list[dict[str, Any]] = []
    with step_run("compare", policy, workdir, tracking, parent_run_id):
        for model in trained.get("clusters", []):
            cluster_id = int(model["cluster_id"])
            cluster = by_id[cluster_id]
            fresh, regression = cluster_calls(workdir, cfg, clusters, cluster_id)
            challenger = answer_and_score(
                model["base_model"],
                model["adapter_dir"],
                fresh,
                regression,
                cluster.output_kind,
                cfg,
                f"challenger #{cluster_id}",
            )
            measured = {
                "challenger": challenger,
                "champion": champions.get(cluster_id),
                "base": selected_base_result(base_of.get(cluster_id)),
            }
            verdict = judge_challenger(fresh, cluster.output_kind, measured, policy)
            decision = verdict.decision
            name = registered_name(cfg.registered_model_prefix, cluster_id)
            version = register_challenger(
                model["model_uri"],
                name,
                {
                    "cluster_label": cluster.label,
                    "refresh": str(refresh_number),
                    "promotion_reason": decision.reason,
                    "n_train": str(model["n_train"]),
                },
                promote_reason=decision.reason if decision.promote else None,
            )
            entry = comparison_entry(
                cluster,
                model,
                fresh,
                regression,
                measured,
                verdict,
                {"name": name, "version": version},
                cfg.slm_hourly_cost_usd,
            )
            entries.append(entry)
            _log_decision(entry, refresh_number, parent_run_id)
            say(f"refresh: cluster #{cluster_id} {name} v{version}: {decision.reason}")
        rows = [row for entry in entries for row in comparison_rows(entry)]
        _log_comparison(rows, entries, refresh_cfg, workdir, refresh_number)
    return {"clusters": entries}


def _log_decision(entry: dict[str, Any], refresh_number: int, parent_run_id: str | None) -> None:
    """The gate's verdict as metrics and tags of the compare run, and as tags of the refresh's parent run."""
    cluster = f"cluster_{entry['cluster_id']}"
    log_numeric_metrics(
        {
            cluster: {
                system: {"score": figures["score"], "cost_per_1k_calls": figures["cost_per_1k_calls"]}
                for system, figures in entry["systems"].items()
                if figures
            }
        }
    )
    mlflow.set_tags({f"{cluster}.promoted": str(entry["promoted"]), f"{cluster}.reason": entry["reason"][:5000]})
    if parent_run_id:
        client = MlflowClient()
        client.set_tag(parent_run_id, f"{cluster}.promoted", str(entry["promoted"]))
        client.set_tag(parent_run_id, f"{cluster}.reason", entry["reason"][:5000])
        for system, figures in entry["systems"].items():
            if figures:  # on the parent, so the MLflow runs table compares refreshes side by side
                client.log_metric(parent_run_id, f"{cluster}.{system}.score", figures["score"], step=refresh_number)
                client.log_metric(
                    parent_run_id,
                    f"{cluster}.{system}.cost_per_1k_calls",
                    figures["cost_per_1k_calls"],
                    step=refresh_number,
                )


def _log_comparison(
    rows: list[dict], entries: list[dict], cfg: RefreshConfig, workdir: Path, refresh_number: int
) -> None:
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    mlflow.log_table(table, artifact_file="comparison_table.json")  # the MLflow UI renders it as a table
    plot = quality_cost_plot(rows, resolve(workdir, cfg.comparison).with_name("quality_vs_cost.png"))
    mlflow.log_artifact(str(plot))
    log_json_artifact({"refresh": refresh_number, "clusters": entries, "rows": rows}, resolve(workdir, cfg.comparison))
    decisions = [
        {
            "refresh": refresh_number,
            "cluster_id": entry["cluster_id"],
            **entry["registered_model"],
            "promoted": entry["promoted"],
            "reason": entry["reason"],
        }
        for entry in entries
    ]  # one line per decision, across refreshes
    log_path = append_promotion_events(resolve(workdir, cfg.promotions_log), decisions)
    mlflow.log_artifact(str(log_path))
