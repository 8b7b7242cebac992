"""S4 select: benchmark the catalog's candidate SLMs per cluster (zero-/few-shot, under the grammar) and pick the
base to fine-tune by quality, cost and constraints. Imports core, slm and scoring."""

from components.select.benchmark import (
    Answer,
    Answers,
    SelectConfig,
    benchmark_candidates,
    leaderboard_table,
    metrics_view,
)

__all__ = ["Answer", "Answers", "SelectConfig", "benchmark_candidates", "leaderboard_table", "metrics_view"]
