"""S6 over S5's trained clusters: each one's held-out calls answered by its fine-tuned SLM beside the base SLM's
answers (S4's, completed where S4 only sampled), scored into its evaluation entry; and which clusters were never converted, with S5's reason. The
task around it answers (on its engine), registers, logs and writes; this module decides nothing about MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from components.core.schema import CallRecord, split_records
from components.core.step_files import FinetunedCluster, FinetuneSummary, Leaderboard, LeaderboardCluster
from components.evaluate.base_answers import base_answers
from components.evaluate.entry import Answer, Confidence, evaluate_cluster
from components.evaluate.evaluation import EvaluateConfig
from components.slm.generation import ProgressCallback, generate_answers

# (S5's line of the cluster, its held-out calls, the cluster's label for progress) -> one answer per call:
# (completion, latency ms) or (completion, latency ms, confidence features or None)
TunedAnswerer = Callable[[FinetunedCluster, list[CallRecord], str], list[tuple]]


@dataclass(frozen=True)
class ClusterEvaluation:
    """One trained cluster, evaluated: its entry of reports/evaluation.json and what the task logs beside it."""

    model: FinetunedCluster
    cluster: LeaderboardCluster
    entry: dict[str, Any]
    call_rows: list[dict[str, Any]]
    train_records: list[CallRecord]
    test_records: list[CallRecord]
    tuned_answers: list[Answer]

    def prediction_rows(self) -> list[dict[str, Any]]:
        """The fine-tuned SLM's answers, one row per held-out call (data/predictions/slm_finetuned.parquet)."""
        return [
            {"record_id": r.record_id, "cluster_id": self.model.cluster_id, "text": text, "latency_ms": latency}
            for r, (text, latency) in zip(self.test_records, self.tuned_answers)
        ]


def split_confidence(answers: list[tuple]) -> tuple[list[Answer], list[Confidence]]:
    """[(completion, latency ms)] and each answer's confidence (None for an answer that came without one)."""
    return [(a[0], a[1]) for a in answers], [a[2] if len(a) > 2 else None for a in answers]


def evaluate_trained_clusters(
    leaderboard: Leaderboard,
    finetune_summary: FinetuneSummary,
    records: dict[str, CallRecord],
    splits: pd.DataFrame,
    base_predictions: pd.DataFrame,
    cfg: EvaluateConfig,
    answer_tuned: TunedAnswerer,
    progress: Callable[[str, int], ProgressCallback | None] = lambda label, total: None,
    generate_base: Callable[..., list[tuple]] = generate_answers,
) -> Iterator[ClusterEvaluation]:
    """Each cluster S5 trained, in S5's order, evaluated on its held-out calls (one at a time: the task registers
    and logs each before the next is answered). The base's answers are S4's where it made them; the calls S4 only
    sampled are answered here (components/evaluate/base_answers.py), by ``generate_base`` (the task passes S6's
    engine); ``progress(label, total)`` shows that."""
    for model in finetune_summary.clusters:
        cluster = leaderboard.cluster(model.cluster_id)
        test_records = split_records(records, splits, model.cluster_id, "test")
        label = f"S6 cluster #{model.cluster_id}"
        base, _ = base_answers(
            test_records,
            base_predictions,
            model.cluster_id,
            cluster.selected,
            model.base_model,
            cfg,
            progress(f"{label} base", len(test_records)),
            generate_base,
        )
        tuned, confidence = split_confidence(answer_tuned(model, test_records, label))
        entry, rows = evaluate_cluster(
            cluster.as_dict(),
            model.n_train,
            test_records,
            base,
            tuned,
            cfg.promotion,
            cfg.slm_hourly_cost_usd,
            confidence,
        )
        train_records = split_records(records, splits, model.cluster_id, "train")
        yield ClusterEvaluation(model, cluster, entry, rows, train_records, test_records, tuned)


def not_converted(finetune_summary: FinetuneSummary) -> list[dict[str, Any]]:
    """The clusters S5 left untrained, with its reason (the run summary counts them as staying with the LLM)."""
    return [{"cluster_id": int(c.cluster_id), "reason": c.reason} for c in finetune_summary.skipped]
