"""The refresh's comparison view: one row per cluster and system (LLM, base SLM, champion, challenger) with the
primary metric and the cost per 1k calls side by side, and a quality-vs-cost plot of those rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
