"""One cluster's evaluation entry of reports/evaluation.json: the three systems' scores on the held-out calls, their
95 % intervals, costs, latencies and the gate's decision. Pure: the task generates the answers and registers."""

from __future__ import annotations

from typing import Any

from components.core.schema import CallRecord
from components.evaluate.evaluation import PRIMARY_METRIC, primary_metric_intervals, score_pairs
from components.evaluate.promotion import GateScores, PromotionPolicy, decide_promotion
from components.scoring.costs import latency_p50, llm_cost_per_1k_calls, slm_cost_per_1k_calls
from components.slm.prompt import parse_completion

Answer = tuple[str, float]  # the raw completion and its latency in ms


def evaluation_entry(
    cluster: dict[str, Any],
    n_train: int,
    test_records: list[CallRecord],
    base_answers: list[Answer],
    tuned_answers: list[Answer],
    policy: PromotionPolicy,
    slm_hourly_cost_usd: float,
) -> dict[str, Any]:
    """Score the LLM (its logged answers are the reference, so it scores 1.0), the base and the fine-tuned SLM on
    ``test_records`` and gate the fine-tuned one (:mod:`components.evaluate.promotion`)."""
    kind = cluster["output_kind"]
    metric = PRIMARY_METRIC[kind]
    expected = [r.response for r in test_records]
    scores = {
        "llm": score_pairs(expected, expected, kind),
        "slm_base": score_pairs(expected, [parse_completion(text) for text, _ in base_answers], kind),
        "slm_finetuned": score_pairs(expected, [parse_completion(text) for text, _ in tuned_answers], kind),
    }
    decision = decide_promotion(
        GateScores(
            llm=scores["llm"][metric],
            challenger=scores["slm_finetuned"][metric],
            n_test=len(test_records),
            base=scores["slm_base"][metric],
        ),
        policy,
        metric,
    )
    latencies = {
        "slm_base": [latency for _, latency in base_answers],
        "slm_finetuned": [latency for _, latency in tuned_answers],
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
    }
