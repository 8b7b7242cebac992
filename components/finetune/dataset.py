"""The examples S5 trains one cluster on: its logged training calls, plus value-diverse augmentation and verified
teacher synthesis when they are switched on, each tagged with its ``metadata.origin`` (log | augmented | teacher).

The validation split (early stopping) is carved from the *logged* calls first, and only the rest feeds augmentation
and the teacher's seeds: an augmented copy of a validation call would make the early-stopping loss a memory test.
Held-out (test) calls are never read here except as requests the teacher's new ones must not duplicate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.core.schema import CallRecord
from components.finetune.augment import ORIGIN_LOG, augment, with_origin
from components.finetune.runs import split_validation
from components.finetune.synthesis import Progress, synthesize
from components.finetune.train import FinetuneConfig

Anonymize = Callable[[list[CallRecord]], list[CallRecord]]


@dataclass
class TrainingSet:
    examples: list[CallRecord]  # what the trainer sees, logged calls first
    validation: list[CallRecord]  # logged calls only
    augmentation: dict[str, Any] = field(default_factory=dict)  # AugmentationReport.as_dict()
    synthesis: dict[str, Any] = field(default_factory=dict)  # SynthesisReport.as_dict()

    @property
    def examples_by_origin(self) -> dict[str, int]:
        return dict(Counter(origin_of(r) for r in self.examples))


def origin_of(record: CallRecord) -> str:
    return str(record.metadata.get("origin", ORIGIN_LOG))


def build_training_set(
    train_calls: Sequence[CallRecord],
    held_out_requests: Sequence[str],
    cfg: FinetuneConfig,
    anonymize: Anonymize | None = None,
    progress: Progress | None = None,
) -> TrainingSet:
    """One cluster's training examples and validation calls from its logged training split."""
    augmentation, synthesis = cfg.augmentation, cfg.synthesis
    if synthesis.enabled and anonymize is None:
        raise ValueError("finetune.synthesis needs S2's anonymizer: teacher output is anonymized like logged calls")
    logged = with_origin(list(train_calls))
    train, validation = split_validation(
        logged, cfg.validation_fraction, cfg.min_validation_records, cfg.min_records_for_validation, cfg.seed
    )
    augmented, augmentation_report = augment(train, augmentation)
    # The teacher's requests must not copy a validation call's either (it would score its own copy).
    not_to_copy = [*held_out_requests, *(r.user_request for r in validation)]
    taught, synthesis_report = synthesize(
        train, not_to_copy, synthesis, anonymize or (lambda records: records), progress
    )
    return TrainingSet(
        examples=train + augmented + taught,
        validation=validation,
        augmentation=augmentation_report.as_dict() if augmentation.enabled else {},
        synthesis=synthesis_report.as_dict() if synthesis.enabled else {},
    )
