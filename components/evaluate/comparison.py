"""The refresh's comparison: each challenger's gate decision against its cluster's champion, base SLM and the LLM
on the same fresh held-out calls, the comparison entry of each cluster, one row per cluster and system (LLM, base
SLM, champion, challenger) with the primary metric and the cost per 1k calls side by side, and a quality-vs-cost
plot of those rows. Pure: the task generates the answers and registers.

Selective systems are compared on what they serve, not on raw accuracy: when the answers carry confidence features,
each SLM's selective figures are fitted on the fresh held-out calls (cross-fitted, components/evaluate/selective.py:
the threshold is recalibrated on them, and the fresh set holds the audited calls first, deferred ones last:
components/evaluate/refresh.py :func:`refresh_splits`), and the champion and the challenger are compared on the share
of calls each serves at parity (:func:`served_at_parity_share`: all of them at whole-cluster parity, its coverage
when only its accepted calls reach parity, none otherwise)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core.clusters import ClusterSummary
from components.core.schema import CallRecord
from components.evaluate.entry import selective_entry
from components.evaluate.promotion import (
    GateScores,
    PromotionDecision,
    PromotionPolicy,
    SelectiveScores,
    decide_promotion,
    served_at_parity,
)
from components.scoring.costs import llm_cost_per_1k_calls, slm_cost_per_1k_calls
from components.scoring.metrics import PRIMARY_METRIC, score_each, score_pairs
from components.slm.prompt import parse_completion

Answer = tuple  # (raw completion, latency in ms) or (..., confidence features or None)

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
    parsed = [parse_completion(answer[0]) for answer in answers]
    confidence = [answer[2] if len(answer) > 2 else None for answer in answers[: len(fresh)]]
    return {
        "scores": score_pairs([r.response for r in fresh], parsed[: len(fresh)], kind),
        "per_call": score_each([r.response for r in fresh], parsed[: len(fresh)], kind),
        "confidence": confidence if any(c is not None for c in confidence) else None,
        "regression_scores": (
            score_pairs([r.response for r in regression], parsed[len(fresh) :], kind) if regression else None
        ),
        "latencies_ms": [answer[1] for answer in answers[: len(fresh)]],
    }


def selective_on_fresh(
    measured: dict[str, Any] | None, metric: str, llm: float, policy: PromotionPolicy
) -> dict[str, Any] | None:
    """An SLM's selective figures recalibrated on the fresh held-out calls (None without confidence features)."""
    if not measured or not measured.get("confidence") or not measured.get("per_call"):
        return None
    return selective_entry(
        measured["per_call"], metric, measured["confidence"], policy.parity * llm, policy.selective_folds
    )


def served_at_parity_share(
    score: float, selective: dict[str, Any] | None, llm: float, n_test: int, policy: PromotionPolicy
) -> float:
    """The share of the fresh calls an SLM answers at parity: all of them when its whole-cluster score reaches
    parity × the LLM on enough calls (the gate's checks 1-2), its coverage when only the calls it accepts pass the
    gate's rule (:func:`served_at_parity`, with ``min_coverage``), none otherwise."""
    if n_test >= policy.min_test_calls and score >= policy.parity * llm:
        return 1.0
    if selective is None:
        return 0.0
    checks = served_at_parity(selective["accepted_accuracy"], selective["accepted_calls"], llm, policy)
    return (
        float(selective["coverage"]) if all(checks.values()) and selective["coverage"] >= policy.min_coverage else 0.0
    )


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
    selective: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # per SLM, on the fresh calls
    served_at_parity: dict[str, float] = field(default_factory=dict)  # per SLM: share served at parity


def judge_challenger(
    fresh: list[CallRecord], kind: str, measured: dict[str, dict[str, Any] | None], policy: PromotionPolicy
) -> ChallengerVerdict:
    """Gate the ``challenger`` of ``measured`` (:func:`score_fresh_and_regression`'s result) against the LLM on the
    fresh calls, the standing ``champion`` (same shape, or None) and S4's ``base`` result
    (:func:`selected_base_result`, or None)."""
    challenger, champion, base = measured["challenger"], measured["champion"], measured["base"]
    metric = PRIMARY_METRIC[kind]
    llm = score_pairs([r.response for r in fresh], [r.response for r in fresh], kind)[metric]
    selective = {name: selective_on_fresh(measured[name], metric, llm, policy) for name in ("challenger", "champion")}
    served = {
        name: served_at_parity_share(measured[name]["scores"][metric], selective[name], llm, len(fresh), policy)
        for name in ("challenger", "champion")
        if measured[name]
    }
    mine = selective["challenger"]
    gate = GateScores(
        llm=llm,
        challenger=challenger["scores"][metric],
        n_test=len(fresh),
        champion=champion["scores"][metric] if champion else None,
        base=base["scores"].get(metric) if base else None,
        challenger_regression=_regression_score(challenger, metric),
        champion_regression=_regression_score(champion, metric),
        selective=(
            SelectiveScores(mine["accepted_accuracy"], mine["accepted_calls"], mine["coverage"]) if mine else None
        ),
        # Compared on calls served at parity when either side is (or may be) selective: both measured their confidence.
        served_at_parity=(
            (served["challenger"], served["champion"]) if champion and selective["champion"] and mine else None
        ),
    )
    return ChallengerVerdict(gate, decide_promotion(gate, policy, metric), selective, served)


def _without_curve(figures: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in figures.items() if key != "risk_coverage"}


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
        "mode": decision.mode,
        "reason": decision.reason,
        "checks": decision.checks,
        # Recalibrated on the fresh held-out calls (threshold, coverage, accepted accuracy and interval) per SLM
        "selective": {name: _without_curve(figures) for name, figures in verdict.selective.items() if figures},
        "served_at_parity": verdict.served_at_parity,
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
