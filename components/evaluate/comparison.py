"""The refresh's comparison: each challenger's gate decision against its cluster's champion, base SLM and the LLM
on the same fresh held-out calls, the comparison entry of each cluster, one row per cluster and system (LLM, base
SLM, champion, challenger) with the primary metric and the cost per 1k calls side by side, and a quality-vs-cost
plot of those rows. Pure: the task generates the answers and registers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.clusters import ClusterSummary
from components.core.schema import CallRecord
from components.evaluate.promotion import GateScores, PromotionDecision, PromotionPolicy, decide_promotion
from components.scoring.costs import llm_cost_per_1k_calls, slm_cost_per_1k_calls
from components.scoring.metrics import PRIMARY_METRIC, score_pairs
from components.slm.prompt import parse_completion

Answer = tuple[str, float]  # the raw completion and its latency in ms

COMPARISON_COLUMNS = [
    "cluster_id",
    "label",
    "system",
    "version",
    "primary_metric",
    "score",
    "regression_score",
    "cost_per_1k_calls",
    "n_test",
    "promoted",
    "reason",
]
_STYLES = {
    "llm": ("o", "#d62728"),
    "slm_base": ("s", "#7f7f7f"),
    "champion": ("D", "#2ca02c"),
    "challenger": ("^", "#1f77b4"),
}


def score_fresh_and_regression(
    fresh: list[CallRecord], regression: list[CallRecord], answers: list[Answer], kind: str
) -> dict[str, Any]:
    """One model's scores on the fresh held-out calls and on the regression set, from one generation pass over
    ``fresh + regression`` (``answers`` in that order); latencies of the fresh calls only."""
    parsed = [parse_completion(text) for text, _ in answers]
    return {
        "scores": score_pairs([r.response for r in fresh], parsed[: len(fresh)], kind),
        "regression_scores": (
            score_pairs([r.response for r in regression], parsed[len(fresh) :], kind) if regression else None
        ),
        "latencies_ms": [latency for _, latency in answers[: len(fresh)]],
    }


def selected_base_result(leaderboard_cluster: dict[str, Any] | None) -> dict[str, Any] | None:
    """S4's result for the candidate it selected for a cluster (the base SLM); None when S4 did not rank one."""
    if not leaderboard_cluster:
        return None
    selected = leaderboard_cluster.get("selected")
    return next((r for r in leaderboard_cluster.get("results", []) if r["candidate"] == selected), None)


def _regression_score(result: dict[str, Any] | None, metric: str) -> float | None:
    return (result.get("regression_scores") or {}).get(metric) if result else None


@dataclass(frozen=True)
class ChallengerVerdict:
    """The gate's inputs (the systems' primary-metric scores) and its decision for one challenger."""

    gate: GateScores
    decision: PromotionDecision


def judge_challenger(
    fresh: list[CallRecord], kind: str, measured: dict[str, dict[str, Any] | None], policy: PromotionPolicy
) -> ChallengerVerdict:
    """Gate the ``challenger`` of ``measured`` (:func:`score_fresh_and_regression`'s result) against the LLM on the
    fresh calls, the standing ``champion`` (same shape, or None) and S4's ``base`` result
    (:func:`selected_base_result`, or None)."""
    challenger, champion, base = measured["challenger"], measured["champion"], measured["base"]
    metric = PRIMARY_METRIC[kind]
    gate = GateScores(
        llm=score_pairs([r.response for r in fresh], [r.response for r in fresh], kind)[metric],
        challenger=challenger["scores"][metric],
        n_test=len(fresh),
        champion=champion["scores"][metric] if champion else None,
        base=base["scores"].get(metric) if base else None,
        challenger_regression=_regression_score(challenger, metric),
        champion_regression=_regression_score(champion, metric),
    )
    return ChallengerVerdict(gate, decide_promotion(gate, policy, metric))


def _system(score: float, cost: float, regression: float | None = None, version: str | None = None) -> dict:
    return {"score": score, "cost_per_1k_calls": cost, "regression_score": regression, "version": version}


def comparison_entry(
    cluster: ClusterSummary,
    model: dict[str, Any],
    fresh: list[CallRecord],
    regression: list[CallRecord],
    measured: dict[str, dict[str, Any] | None],
    verdict: ChallengerVerdict,
    registered: dict[str, str],
    slm_hourly_cost_usd: float,
) -> dict[str, Any]:
    """One cluster's entry of reports/comparison.json: the gate's decision, the registered version and each system's
    score and cost per 1k calls on the fresh calls (None for a system not measured). ``measured`` as
    :func:`judge_challenger` took it; ``registered``: the challenger's registry ``name`` and ``version``."""
    challenger, champion, base = measured["challenger"], measured["champion"], measured["base"]
    gate, decision = verdict.gate, verdict.decision
    metric, hourly = PRIMARY_METRIC[cluster.output_kind], slm_hourly_cost_usd
    return {
        "cluster_id": cluster.cluster_id,
        "label": cluster.label,
        "primary_metric": metric,
        "n_test": len(fresh),
        "n_regression": len(regression),
        "n_train": model["n_train"],
        "promoted": decision.promote,
        "reason": decision.reason,
        "checks": decision.checks,
        "registered_model": {
            "name": registered["name"],
            "version": registered["version"],
            "alias": "champion" if decision.promote else "challenger",
        },
        "systems": {
            "llm": _system(gate.llm, llm_cost_per_1k_calls(fresh)),
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
                registered["version"],
            ),
        },
    }


def comparison_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of one evaluated cluster (see :data:`COMPARISON_COLUMNS`); systems that were not measured are left out."""
    rows = []
    for system, figures in entry["systems"].items():
        if figures is None:
            continue
        rows.append(
            {
                "cluster_id": entry["cluster_id"],
                "label": entry["label"],
                "system": system,
                "version": figures.get("version"),
                "primary_metric": entry["primary_metric"],
                "score": figures["score"],
                "regression_score": figures.get("regression_score"),
                "cost_per_1k_calls": figures["cost_per_1k_calls"],
                "n_test": entry["n_test"],
                "promoted": entry["promoted"] if system == "challenger" else None,
                "reason": entry["reason"] if system == "challenger" else None,
            }
        )
    return rows


def quality_cost_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Scatter of score against cost per 1k calls (log-like x axis), one marker per system, labelled by cluster."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=110)
    axes = figure.add_subplot()
    costs = [row["cost_per_1k_calls"] for row in rows]
    for system, (marker, colour) in _STYLES.items():
        chosen = [row for row in rows if row["system"] == system]
        if not chosen:
            continue
        axes.scatter(
            [r["cost_per_1k_calls"] for r in chosen],
            [r["score"] for r in chosen],
            marker=marker,
            color=colour,
            s=60,
            label=system,
        )
        for row in chosen:
            axes.annotate(
                f"#{row['cluster_id']}",
                (row["cost_per_1k_calls"], row["score"]),
                textcoords="offset points",
                xytext=(5, 4),
            )
    positive = [c for c in costs if c > 0]
    if positive:  # API and self-hosted costs differ by orders of magnitude; symlog also takes a zero cost
        axes.set_xscale("symlog", linthresh=max(min(positive), 1e-6))
    axes.set_xlabel("cost per 1k calls (USD)")
    axes.set_ylabel("primary metric on fresh held-out calls")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title("Quality vs cost per cluster")
    axes.grid(alpha=0.3)
    if rows:
        axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path
