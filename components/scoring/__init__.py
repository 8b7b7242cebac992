"""How an answer is scored against the LLM's (tool-call match, JSON, text metrics, an optional judge) or against
ground-truth labels. Imports core only; every step that compares answers uses it."""

from components.scoring.judge import make_judge
from components.scoring.labels import read_ground_truth, score_against_labels
from components.scoring.metrics import PRIMARY_METRIC, score_pairs

__all__ = ["PRIMARY_METRIC", "make_judge", "read_ground_truth", "score_against_labels", "score_pairs"]
