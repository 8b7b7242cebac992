"""What data scientists browse in the MLflow UI beside the metrics: the per-call results of an evaluation as a table
the UI renders (request, the LLM's answer, the SLM's answers, each metric), and the data a run read as MLflow
datasets (its run inputs, so lineage shows in the runs table instead of "Dataset: -").

A table artifact rather than ``mlflow.genai.evaluate``: that creates a trace per row, measured at ~1.6 s per call on
2 cores (158 s for 100 calls), longer than generating the answers; the table holds the same per-call figures.
Texts here are S2's anonymized ones: no raw value reaches MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from components.core.schema import CallRecord, records_to_frame

PER_CALL_TABLE = "evaluation/per_call_results.json"


def log_per_call_results(rows: Sequence[dict[str, Any]], artifact_file: str = PER_CALL_TABLE) -> None:
    """One row per held-out call: ids, cluster, texts, and each system's metric values."""
    if rows:
        mlflow.log_table(pd.DataFrame(list(rows)), artifact_file=artifact_file)


def log_dataset(frame: pd.DataFrame, name: str, source: Path, context: str) -> None:
    """``frame`` (as read from ``source``) as an input of the active run, under ``context`` (training/evaluation)."""
    dataset = mlflow.data.from_pandas(frame, source=str(source), name=name)
    mlflow.log_input(dataset, context=context)


def log_evaluation_inputs(
    records: dict[str, CallRecord], splits: pd.DataFrame, cluster_ids: Sequence[int], curated: Path, split_file: Path
) -> None:
    """The curated calls (S2's output) and the converted clusters' train and test calls as the run's inputs.
    MLflow keeps each dataset's digest, schema and row count, with its source path; never the rows."""
    log_dataset(records_to_frame(list(records.values())), "curated", curated, context="curated")
    for split, context in (("train", "training"), ("test", "evaluation")):
        part = splits[(splits.split == split) & splits.cluster_id.isin(list(cluster_ids))]
        if part.empty:
            continue
        frame = records_to_frame([records[i] for i in part.record_id]).assign(cluster_id=part.cluster_id.to_numpy())
        log_dataset(frame, split, split_file, context)
