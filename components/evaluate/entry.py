"""One cluster's evaluation entry of reports/evaluation.json: the three systems' scores on the held-out calls, their
95 % intervals, costs, latencies and the gate's decision; and the same calls one row each, for the MLflow table.
Pure: the task generates the answers and registers."""

from __future__ import annotations

from typing import Any

from components.core.schema import CallRecord
from components.evaluate.evaluation import BINARY_METRICS, primary_metric_intervals
from components.evaluate.promotion import GateScores, PromotionPolicy, SelectiveScores, decide_promotion
from components.evaluate.selective import feature_matrix, selective_figures
from components.scoring.costs import latency_p50, llm_cost_per_1k_calls, slm_cost_per_1k_calls
from components.scoring.metrics import PRIMARY_METRIC, mean_scores, score_each, score_pairs
from components.slm.prompt import parse_completion, render_target

Answer = tuple[str, float]  # the raw completion and its latency in ms
CallScores = list[dict[str, float]]  # one dict of metric values per held-out call, in the calls' order
Confidence = dict[str, float] | None  # an answer's confidence features (components/slm/confidence.py)


def score_each_answer(test_records: list[CallRecord], answers: list[Answer], kind: str) -> CallScores:
    """An SLM's scores on each held-out call, against the LLM's logged answers (each completion parsed once)."""
    return score_each([r.response for r in test_records], [parse_completion(text) for text, _ in answers], kind)


def score_answers(test_records: list[CallRecord], answers: list[Answer], kind: str) -> dict[str, float]:
    """An SLM's mean scores on the held-out calls, against the LLM's logged answers."""
    return mean_scores(score_each_answer(test_records, answers, kind), kind)


def evaluate_cluster(
    cluster: dict[str, Any],
    n_train: int,
    test_records: list[CallRecord],
    base_answers: list[Answer],
    tuned_answers: list[Answer],
    policy: PromotionPolicy,
    slm_hourly_cost_usd: float,
    tuned_confidence: list[Confidence] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cluster's evaluation entry and its per-call rows, both from one parse and score of each SLM answer.
    ``tuned_confidence``: the fine-tuned SLM's confidence features per answer (None: no selective mode)."""
    answers = {"slm_base": base_answers, "slm_finetuned": tuned_answers}
    per_call = {
        system: score_each_answer(test_records, given, cluster["output_kind"]) for system, given in answers.items()
    }
    entry = evaluation_entry(
        cluster, n_train, test_records, answers, per_call, policy, slm_hourly_cost_usd, tuned_confidence
    )
    return entry, per_call_rows(cluster, test_records, answers, per_call, tuned_confidence)


def selective_entry(
    per_call: CallScores, metric: str, confidence: list[Confidence] | None, target: float, folds: int
) -> dict[str, Any] | None:
    """The fine-tuned SLM's selective figures (components/evaluate/selective.py) on the held-out calls: a call is
    right when its primary metric is 1 (a full-call match). None when the metric is not 0/1 per call or an answer
    carries no confidence."""
    if metric not in BINARY_METRICS:
        return None
    matrix = feature_matrix(confidence)
    if matrix is None or len(matrix) != len(per_call) or len(per_call) < 2:
        return None
    correct = [scores.get(metric, 0.0) >= 1.0 for scores in per_call]
    import numpy as np

    return selective_figures(matrix, np.array(correct, dtype=bool), target, folds)


def evaluation_entry(
    cluster: dict[str, Any],
    n_train: int,
    test_records: list[CallRecord],
    answers: dict[str, list[Answer]],
    per_call: dict[str, CallScores],
    policy: PromotionPolicy,
    slm_hourly_cost_usd: float,
    tuned_confidence: list[Confidence] | None = None,
) -> dict[str, Any]:
    """Score the LLM (its logged answers are the reference, so it scores 1.0), the base and the fine-tuned SLM on
    ``test_records`` and gate the fine-tuned one (:mod:`components.evaluate.promotion`), also for selective parity
    when its answers carry confidence features. ``answers`` and ``per_call`` (:func:`score_each_answer`) are keyed
    by ``slm_base`` and ``slm_finetuned``."""
    kind = cluster["output_kind"]
    metric = PRIMARY_METRIC[kind]
    expected = [r.response for r in test_records]
    scores = {
        "llm": score_pairs(expected, expected, kind),
        "slm_base": mean_scores(per_call["slm_base"], kind),
        "slm_finetuned": mean_scores(per_call["slm_finetuned"], kind),
    }
    selective = selective_entry(
        per_call["slm_finetuned"],
        metric,
        tuned_confidence,
        policy.parity * scores["llm"][metric],
        policy.selective_folds,
    )
    decision = decide_promotion(
        GateScores(
            llm=scores["llm"][metric],
            challenger=scores["slm_finetuned"][metric],
            n_test=len(test_records),
            base=scores["slm_base"][metric],
            selective=(
                SelectiveScores(selective["accepted_accuracy"], selective["accepted_calls"], selective["coverage"])
                if selective
                else None
            ),
        ),
        policy,
        metric,
    )
    latencies = {
        "slm_base": [latency for _, latency in answers["slm_base"]],
        "slm_finetuned": [latency for _, latency in answers["slm_finetuned"]],
    }
    return {
        "cluster_id": int(cluster["cluster_id"]),
        "label": cluster["label"],
        "output_kind": kind,
        "primary_metric": metric,
        "n_train": n_train,
        "n_test": len(test_records),
        "base_model": cluster["selected"],
        "scores": scores,
        "primary_metric_ci95": primary_metric_intervals(scores, metric, len(test_records)),
        "parity_bar": policy.parity * scores["llm"][metric],
        "cost_per_1k_calls": {
            "llm": llm_cost_per_1k_calls(test_records),
            "slm_base": slm_cost_per_1k_calls(latencies["slm_base"], slm_hourly_cost_usd),
            "slm_finetuned": slm_cost_per_1k_calls(latencies["slm_finetuned"], slm_hourly_cost_usd),
        },
        "latency_ms_p50": {system: latency_p50(values) for system, values in latencies.items()},
        "promoted": decision.promote,
        "promotion_reason": decision.reason,
        "promotion_checks": decision.checks,
        "mode": decision.mode,
        "selective": selective,
        "selective_checks": decision.selective_checks,
    }


def per_call_rows(
    cluster: dict[str, Any],
    test_records: list[CallRecord],
    answers: dict[str, list[Answer]],
    per_call: dict[str, CallScores],
    tuned_confidence: list[Confidence] | None = None,
) -> list[dict[str, Any]]:
    """One row per held-out call: the request (the last user message), the LLM's answer, each SLM's answer, and
    each SLM's metric values (``per_call``) and latency as ``<system>.<metric>``, and the fine-tuned answer's
    confidence features as ``slm_finetuned.<feature>`` when it has them. Texts are as S2 left them (anonymized)."""
    rows = []
    for index, record in enumerate(test_records):
        row: dict[str, Any] = {
            "record_id": record.record_id,
            "cluster_id": int(cluster["cluster_id"]),
            "conversation_id": record.conversation_id,
            "request": record.user_request,
            "llm": render_target(record.response),
        }
        for system, given in answers.items():
            text, latency = given[index]
            row[system] = text
            row[f"{system}.latency_ms"] = float(latency)
            row |= {f"{system}.{metric}": value for metric, value in per_call[system][index].items()}
        features = tuned_confidence[index] if tuned_confidence and index < len(tuned_confidence) else None
        row |= {f"slm_finetuned.{name}": float(value) for name, value in (features or {}).items()}
        rows.append(row)
    return rows
