"""What a flow run publishes to Prefect's UI: a Markdown artifact (the flow run's Artifacts tab, and the
Artifacts page under its key, where each run adds a version) with the conversion's headline and per-cluster table,
or a refresh's decisions, and the link to the MLflow parent run (components/evaluate/flow_summary.py writes it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import mlflow
from mlflow.tracking import MlflowClient
from prefect.artifacts import create_markdown_artifact

from components.evaluate.flow_summary import RunLink, conversion_markdown, refresh_markdown, run_url

CONVERSION_KEY = "llm2slm-conversion"
REFRESH_KEY = "llm2slm-refresh"


def mlflow_run_link(run_id: str) -> RunLink:
    """The run in the current tracking store: a URL to its page when that store is an http(s) server."""
    uri = mlflow.get_tracking_uri()
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    return RunLink(run_id, uri, run_url(uri, experiment_id, run_id))


def publish_conversion(evaluation: Mapping[str, Any], parent_run_id: str) -> UUID:
    """The `llm_to_slm` flow run's artifact: reports/evaluation.json's summary and clusters."""
    return create_markdown_artifact(
        markdown=conversion_markdown(evaluation, mlflow_run_link(parent_run_id)),
        key=CONVERSION_KEY,
        description=str(evaluation.get("summary", {}).get("headline", "llm2slm conversion"))[:500],
    )


def publish_refresh(summary: Mapping[str, Any], parent_run_id: str) -> UUID:
    """The `refresh` flow run's artifact: its batch, drift, retraining plan and each challenger's decision."""
    return create_markdown_artifact(
        markdown=refresh_markdown(summary, mlflow_run_link(parent_run_id)),
        key=REFRESH_KEY,
        description=f"llm2slm refresh {summary.get('refresh', '')}",
    )
