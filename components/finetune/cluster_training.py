"""S5 over the leaderboard: which clusters are trained, in what order, within what budget, and the summary of
reports/finetune.json. The task around it only reads the inputs, logs each trained cluster and writes the summary.

A cluster is skipped, with its reason, when no candidate SLM passed S4, when the step's time budget is spent before
it starts, or when training refuses its data (e.g. every call longer than ``max_length``); it stays with the LLM.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from components.core.budget import TimeBudget
from components.core.schema import CallRecord, records_to_frame, split_records, write_table
from components.core.step_files import (
    FinetunedCluster,
    FinetuneSummary,
    Leaderboard,
    LeaderboardCluster,
    SkippedCluster,
    TrainingCoverage,
)
from components.finetune.dataset import TrainingSet, build_training_set, origin_of
from components.finetune.train import FinetuneConfig, FinetuneResult, config_for_cluster, finetune

Say = Callable[[str], None]
# label -> a progress callback: (step, total, loss) for training, (done, total) for the teacher
StepReporter = Callable[[str], Callable[[int, int, float], None]]
Progress = Callable[[str], Callable[..., None]]


@dataclass(frozen=True)
class TrainingDirs:
    """Where S5 writes, per cluster: the adapters, the resumable checkpoints and the training sets."""

    adapters: Path
    checkpoints: Path
    training_sets: Path


@dataclass(frozen=True)
class TrainedCluster:
    """One cluster's finished training, for the task to log: what it trained on and what came out."""

    cluster: LeaderboardCluster
    config: FinetuneConfig
    train_records: list[CallRecord]
    training: TrainingSet
    set_path: Path
    set_frame: pd.DataFrame | None
    result: FinetuneResult

    @property
    def examples_by_origin(self) -> dict[str, int]:
        """Trained examples per origin (log, augmented, teacher), the calls too long for the window left out."""
        left_out = set(self.result.too_long_record_ids)
        return dict(Counter(origin_of(r) for r in self.training.examples if r.record_id not in left_out))


def write_training_set(training: TrainingSet, path: Path) -> pd.DataFrame:
    """The cluster's examples (``metadata.use``: train) and validation calls (``validation``), with their origin."""
    rows = [r.model_copy(update={"metadata": {**r.metadata, "use": "train"}}) for r in training.examples]
    rows += [r.model_copy(update={"metadata": {**r.metadata, "use": "validation"}}) for r in training.validation]
    frame = records_to_frame(rows)  # built once: written, and logged as the run's input
    write_table(frame, path)
    return frame


def summary_entry(trained: TrainedCluster, model_uri: str | None, data_version: dict) -> FinetunedCluster:
    """The cluster's line of reports/finetune.json."""
    result = trained.result
    # what the run reports under the same name is copied; the rest is the cluster's or rounded for reading
    copied = {name: value for name, value in asdict(result).items() if name in FinetunedCluster.model_fields}
    return FinetunedCluster(
        **copied
        | {
            "cluster_id": trained.cluster.cluster_id,
            "label": trained.cluster.label,
            "examples_by_origin": trained.examples_by_origin,
            "augmentation": trained.training.augmentation,
            "synthesis": trained.training.synthesis,
            "training_set": str(trained.set_path),
            "n_validation": len(result.validation_record_ids),
            "adapter_dir": str(result.adapter_dir),
            "model_uri": model_uri,
            "seconds": round(result.seconds, 1),
            "train_tokens_per_second": round(result.trained_tokens / result.seconds, 1) if result.seconds else None,
            "mean_tokens_per_call": round(result.mean_tokens_per_call, 1),
            "data_version": data_version,
        }
    )


def _report_result(cluster_id: int, cfg: FinetuneConfig, result: FinetuneResult, say: Say) -> None:
    if result.reused:
        say(f"S5 finetune: cluster #{cluster_id}: same data and settings as the finished adapter, reused")
    if result.stopped_by_budget:
        say(
            f"S5 finetune: cluster #{cluster_id}: stopped at step {result.steps} by the time budget "
            f"(finetune.time_budget_minutes); its best adapter so far is used, and the next run with the same "
            "data and settings resumes from its checkpoint"
        )
    tokens = result.prompt_tokens or {}
    if tokens.get("before") and tokens.get("after"):
        say(
            f"S5 finetune: cluster #{cluster_id}: tokens per call (median) {tokens['before']['median']} "
            f"with the full prompt, {tokens['after']['median']} in the prompt spec's context window"
        )
    if result.too_long_record_ids:
        say(
            f"S5 finetune: cluster #{cluster_id}: {len(result.too_long_record_ids)} calls longer than "
            f"max_length={cfg.max_length} tokens left out of training"
        )


@dataclass
class CoverageTally:
    """S5's reach over the candidate clusters, counted while the loop runs (:class:`TrainingCoverage`)."""

    train_calls: dict[int, int]  # candidate cluster -> its logged training calls
    served_by: dict[int, str | None]
    left_for_budget: list[int]

    def summary(self, say: Say) -> TrainingCoverage:
        """The coverage, also said in one line (the step's last)."""
        covered = sum(n for cluster_id, n in self.train_calls.items() if self.served_by.get(cluster_id))
        total = sum(self.train_calls.values())
        if total:
            say(
                f"S5 finetune: {covered} of {total} training calls of the {len(self.train_calls)} candidate clusters "
                f"covered by a trained adapter ({covered / total:.0%}); left for the time budget: "
                f"{self.left_for_budget or 'none'}"
            )
        return TrainingCoverage(
            candidate_clusters=len(self.train_calls),
            trained_clusters=sum(1 for adapter in self.served_by.values() if adapter),
            candidate_train_calls=total,
            covered_train_calls=covered,
            covered_share=round(covered / total, 4) if total else None,
            served_by=self.served_by,
            left_for_budget=self.left_for_budget,
        )


def train_clusters(
    leaderboard: Leaderboard,
    records: dict[str, CallRecord],
    splits: pd.DataFrame,
    cfg: FinetuneConfig,
    dirs: TrainingDirs,
    *,
    budget: TimeBudget,
    record_trained: Callable[[TrainedCluster], FinetunedCluster | None],
    anonymize: Callable[[list[CallRecord]], list[CallRecord]] | None = None,
    progress: Progress,
    step_reporter: StepReporter,
    say: Say,
    writes: bool = True,
    train: Callable[..., FinetuneResult] = finetune,
) -> FinetuneSummary:
    """Train each cluster S4 selected an SLM for, in S3's conversion order (S4 kept it). ``record_trained`` logs
    a trained cluster and returns its summary line (None on a rank that does not write: ``writes`` False);
    ``train``: one cluster's fine-tune (the task passes its own, so a test can stand in for the training)."""
    trained: list[FinetunedCluster] = []
    skipped: list[SkippedCluster] = []
    tally = CoverageTally({}, {}, [])
    for cluster in leaderboard.clusters:
        cluster_id = cluster.cluster_id
        if not cluster.selected:
            reason = f"no candidate SLM passed S4: {cluster.reason or 'see the leaderboard'}"
            skipped.append(SkippedCluster(cluster_id=cluster_id, label=cluster.label, reason=reason))
            continue
        train_records = split_records(records, splits, cluster_id, "train")
        tally.train_calls[cluster_id], tally.served_by[cluster_id] = len(train_records), None
        if budget.spent():
            say(f"S5 finetune: cluster #{cluster_id} not trained: {budget.reason}")
            skipped.append(SkippedCluster(cluster_id=cluster_id, label=cluster.label, reason=budget.reason))
            tally.left_for_budget.append(cluster_id)
            continue
        cluster_cfg = config_for_cluster(cfg, cluster_id)
        held_out = split_records(records, splits, cluster_id, "test")
        training = build_training_set(
            train_records,
            [r.user_request for r in held_out],
            cluster_cfg,
            anonymize=anonymize,
            progress=progress(f"S5 cluster #{cluster_id} teacher"),
        )
        set_path = dirs.training_sets / f"cluster_{cluster_id}.parquet"
        set_frame = write_training_set(training, set_path) if writes else None
        say(
            f"S5 finetune: cluster #{cluster_id} '{cluster.label}', {len(train_records)} logged calls, "
            f"{len(training.examples)} training examples {training.examples_by_origin}, base {cluster.selected}"
        )
        try:
            result = train(
                cluster.selected_ref,
                training.examples,
                cluster_cfg,
                dirs.adapters / f"cluster_{cluster_id}",
                eval_records=training.validation,
                progress_callback=step_reporter(f"S5 cluster #{cluster_id}"),
                checkpoint_dir=dirs.checkpoints / f"cluster_{cluster_id}",
                deadline=budget.deadline,
                clock=budget.clock,
            )
        except ValueError as error:  # e.g. every call longer than max_length: this cluster stays with the LLM
            say(f"S5 finetune: cluster #{cluster_id} not trained: {error}")
            skipped.append(SkippedCluster(cluster_id=cluster_id, label=cluster.label, reason=str(error)))
            continue
        _report_result(cluster_id, cluster_cfg, result, say)
        tally.served_by[cluster_id] = str(result.adapter_dir)
        line = record_trained(
            TrainedCluster(cluster, cluster_cfg, train_records, training, set_path, set_frame, result)
        )
        if line is not None:
            trained.append(line)
    return FinetuneSummary(clusters=trained, skipped=skipped, coverage=tally.summary(say))
