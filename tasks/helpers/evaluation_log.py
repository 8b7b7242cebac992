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

PER_CALL_TABLE = "evaluation/per_call_results.json"


def log_per_call_results(rows: Sequence[dict[str, Any]], artifact_file: str = PER_CALL_TABLE) -> None:
    """One row per held-out call: ids, cluster, texts, and each system's metric values."""
    if rows:
        mlflow.log_table(pd.DataFrame(list(rows)), artifact_file=artifact_file)


def log_dataset(frame: pd.DataFrame, name: str, source: Path, context: str) -> None:
    """``frame`` (as read from ``source``) as an input of the active run, under ``context`` (training/evaluation)."""
    dataset = mlflow.data.from_pandas(frame, source=str(source), name=name)
    mlflow.log_input(dataset, context=context)
