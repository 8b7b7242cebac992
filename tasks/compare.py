"""Refresh S6: each new challenger against its cluster's champion and the LLM on the same fresh held-out calls,
the promotion gate, the registry aliases, and the comparison view (table + quality-vs-cost plot) in MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core.clusters import registered_name
from components.core.config import resolve
from components.evaluate.comparison import COMPARISON_COLUMNS, comparison_rows, quality_cost_plot
from components.evaluate.evaluation import (
    PRIMARY_METRIC,
    EvaluateConfig,
    llm_cost_per_1k_calls,
    score_pairs,
    slm_cost_per_1k_calls,
)
from components.evaluate.promotion import GateScores, PromotionPolicy, decide_promotion
from components.evaluate.refresh import RefreshConfig
from tasks.helpers.progress import say
from tasks.helpers.registry import register_challenger
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run
from tasks.refresh import answer_and_score, cluster_calls


def _regression_score(result: dict | None, metric: str) -> float | None:
    return (result.get("regression_scores") or {}).get(metric) if result else None


def _system(score: float, cost: float, regression: float | None = None, version: str | None = None) -> dict:
    return {"score": score, "cost_per_1k_calls": cost, "regression_score": regression, "version": version}


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
    by_id = {int(c["cluster_id"]): c for c in clusters["clusters"]}
    base_of = {int(c["cluster_id"]): c for c in (leaderboard or {}).get("clusters", [])}
    entries: list[dict[str, Any]] = []
    with step_run("compare", policy, workdir, tracking, parent_run_id):
        for model in trained.get("clusters", []):
            cluster_id = int(model["cluster_id"])
            cluster, kind = by_id[cluster_id], by_id[cluster_id]["output_kind"]
            metric = PRIMARY_METRIC[kind]
            fresh, regression = cluster_calls(workdir, cfg, clusters, cluster_id)
            challenger = answer_and_score(
                model["base_model"], model["adapter_dir"], fresh, regression, kind, cfg, f"challenger #{cluster_id}"
            )
            champion = champions.get(cluster_id)
            base = next(
                (
                    r
                    for r in base_of.get(cluster_id, {}).get("results", [])
                    if r["candidate"] == base_of[cluster_id].get("selected")
                ),
                None,
            )
            llm_score = score_pairs([r.response for r in fresh], [r.response for r in fresh], kind)[metric]
            gate = GateScores(
                llm=llm_score,
                challenger=challenger["scores"][metric],
                n_test=len(fresh),
                champion=champion["scores"][metric] if champion else None,
                base=base["scores"].get(metric) if base else None,
                challenger_regression=_regression_score(challenger, metric),
                champion_regression=_regression_score(champion, metric),
            )
            decision = decide_promotion(gate, policy, metric)
            name = registered_name(cfg.registered_model_prefix, cluster_id)
            version = register_challenger(
                model["model_uri"],
                name,
                {
                    "cluster_label": cluster["label"],
                    "refresh": str(refresh_number),
                    "promotion_reason": decision.reason,
                    "n_train": str(model["n_train"]),
                },
                promote_reason=decision.reason if decision.promote else None,
            )
            hourly = cfg.slm_hourly_cost_usd
            entry = {
                "cluster_id": cluster_id,
                "label": cluster["label"],
                "primary_metric": metric,
                "n_test": len(fresh),
                "n_regression": len(regression),
                "n_train": model["n_train"],
                "promoted": decision.promote,
                "reason": decision.reason,
                "checks": decision.checks,
                "registered_model": {
                    "name": name,
                    "version": version,
                    "alias": "champion" if decision.promote else "challenger",
                },
                "systems": {
                    "llm": _system(llm_score, llm_cost_per_1k_calls(fresh)),
                    "slm_base": (
                        _system(
                            base["scores"].get(metric, 0.0),
                            slm_cost_per_1k_calls([base.get("latency_ms_p50", 0.0)], hourly),
                        )
                        if base
                        else None
                    ),
                    "champion": (
                        _system(
                            gate.champion,
                            slm_cost_per_1k_calls(champion["latencies_ms"], hourly),
                            gate.champion_regression,
                            champion["version"],
                        )
                        if champion
                        else None
                    ),
                    "challenger": _system(
                        gate.challenger,
                        slm_cost_per_1k_calls(challenger["latencies_ms"], hourly),
                        gate.challenger_regression,
                        version,
                    ),
                },
            }
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
    log_path = resolve(workdir, cfg.promotions_log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as handle:  # one line per decision, across refreshes
        for entry in entries:
            handle.write(
                json.dumps(
                    {
                        "refresh": refresh_number,
                        "cluster_id": entry["cluster_id"],
                        **entry["registered_model"],
                        "promoted": entry["promoted"],
                        "reason": entry["reason"],
                    }
                )
                + "\n"
            )
    mlflow.log_artifact(str(log_path))
