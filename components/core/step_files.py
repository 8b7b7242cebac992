"""The typed contents of the JSON files S4 → S6 pass on: the leaderboard (S4), the fine-tune summary (S5) and the
evaluation (S6). Readers get attributes, not string keys; a field a step adds later lands here, typed.

Every model keeps the keys it does not name (``extra="allow"``), and a file is written back with the keys it was
built from only (:meth:`StepFile.as_dict`), so a file holds the same keys and values as before these models (the
named keys come first).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StepFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    def as_dict(self) -> dict[str, Any]:
        """The file's content as plain values: the keys it was built or read with (defaults it never set are not
        added); values a step put in an open part (numpy numbers...) stay as they were, for ``json.dumps``."""
        return self.model_dump(exclude_unset=True)


# --- S4 select: reports/leaderboard.json ---------------------------------------------------------------------------


class LeaderboardCluster(StepFile):
    """One cluster's benchmark: every candidate × mode run (``results``) and the one chosen, with why."""

    cluster_id: int
    label: str = ""
    results: list[dict[str, Any]] = Field(default_factory=list)
    selected: str | None = None  # the catalog name of the chosen SLM; None: no candidate passed
    selected_ref: str | None = None  # its catalog reference, what S5 fine-tunes
    selected_mode: str | None = None
    reason: str | None = None


class Leaderboard(StepFile):
    candidates: list[dict[str, Any]] = Field(default_factory=list)  # each catalog candidate, benchmarked or skipped
    clusters: list[LeaderboardCluster]  # in S3's conversion order

    def cluster(self, cluster_id: int) -> LeaderboardCluster:
        return next(c for c in self.clusters if c.cluster_id == cluster_id)


# --- S5 finetune: reports/finetune.json ----------------------------------------------------------------------------


class FinetunedCluster(StepFile):
    """One trained cluster: its adapter, the data it saw and how the run went (required: what S6 reads)."""

    cluster_id: int
    label: str = ""
    n_train: int
    examples_by_origin: dict[str, int] = Field(default_factory=dict)
    augmentation: dict[str, Any] | None = None
    synthesis: dict[str, Any] | None = None
    training_set: str | None = None
    n_validation: int = 0
    too_long_record_ids: list[str] = Field(default_factory=list)
    base_model: str
    adapter_dir: str
    merged_dir: str | None = None
    model_uri: str | None = None
    steps: int = 0
    stopped_early: bool = False
    train_loss: float | None = None
    eval_loss: float | None = None
    seconds: float = 0.0
    train_tokens_per_second: float | None = None
    mean_tokens_per_call: float | None = None
    prompt_spec: dict[str, Any] | None = None
    prompt_tokens: dict[str, Any] | None = None
    device: str | None = None
    dtype: str | None = None
    precision: str | None = None
    trainable_parameters: int | None = None
    reused: bool = False
    resumed_from_step: int | None = None
    stopped_by_budget: bool = False
    data_version: dict[str, Any] = Field(default_factory=dict)


class SkippedCluster(StepFile):
    """A cluster S5 did not train, and why (no SLM passed S4, the time budget, no call fits the window)."""

    cluster_id: int
    label: str = ""
    reason: str


class TrainingCoverage(StepFile):
    """How far S5's budget reached: the candidate clusters (S4 selected an SLM) and their logged training calls,
    how many a trained adapter covers, which adapter serves each, and which the time budget left to the LLM."""

    candidate_clusters: int
    trained_clusters: int
    candidate_train_calls: int
    covered_train_calls: int
    covered_share: float | None  # covered / candidate training calls (None: no candidate call)
    served_by: dict[int, str | None]  # candidate cluster -> the adapter folder serving it (None: the LLM)
    left_for_budget: list[int] = Field(default_factory=list)  # candidates the time budget left untrained


class FinetuneSummary(StepFile):
    clusters: list[FinetunedCluster]
    skipped: list[SkippedCluster] = Field(default_factory=list)
    coverage: TrainingCoverage | None = None  # None in a summary written before it was reported


# --- S6 evaluate: reports/evaluation.json --------------------------------------------------------------------------


class EvaluationEntry(StepFile):
    """One evaluated cluster: the three systems' scores on the held-out calls and the gate's decision; the rest of
    its figures (components/evaluate/entry.py writes them) are kept as they were written."""

    cluster_id: int
    promoted: bool = False
    promotion_reason: str | None = None
    mode: str | None = None
    base_model: str | None = None
    primary_metric: str | None = None


class Evaluation(StepFile):
    summary: dict[str, Any] = Field(default_factory=dict)
    clusters: list[EvaluationEntry]
