"""S6 evaluate and iterate: score the fine-tuned SLM against the LLM and its base, the promotion gate, the HTML
report, comparison rows, drift, and the refresh plan. Imports core, scoring and slm; never serve."""

from components.evaluate.comparison import COMPARISON_COLUMNS, comparison_rows, quality_cost_plot
from components.evaluate.drift import cluster_mix, detect_drift
from components.evaluate.evaluation import EvaluateConfig
from components.evaluate.promotion import GateScores, PromotionPolicy, decide_promotion
from components.evaluate.refresh import (
    RefreshConfig,
    champion_scores_after,
    load_state,
    match_cluster_ids,
    next_state,
    plan_retraining,
    refresh_splits,
    save_state,
)

__all__ = [
    "COMPARISON_COLUMNS",
    "EvaluateConfig",
    "GateScores",
    "PromotionPolicy",
    "RefreshConfig",
    "champion_scores_after",
    "cluster_mix",
    "comparison_rows",
    "decide_promotion",
    "detect_drift",
    "load_state",
    "match_cluster_ids",
    "next_state",
    "plan_retraining",
    "quality_cost_plot",
    "refresh_splits",
    "save_state",
]
