"""MLflow wiring shared by the step tasks: where to track, the conversion's parent run, one run per step.

On the embedded default the store is SQLite in the work directory (``mlflow.db``) with artifacts in
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` points every run at a server instead. The parent run is created through
the client and its id handed to each step explicitly, so nesting does not depend on which thread a task runs in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from components.core.config import StepConfig

STEP_TAG = "llm2slm.step"


class TrackingConfig(StepConfig):
    experiment: str = "llm2slm"


def embedded_store_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; remember which values were our own embedded stores
# so that a later conversion in the same process (another work dir) is not mistaken for a user's server.
_EMBEDDED_URIS_SET: set[str] = set()


def tracking_uri(workdir: Path) -> str:
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env and from_env not in _EMBEDDED_URIS_SET:
        return from_env
    return embedded_store_uri(workdir)


def use_existing_registry(workdir: Path) -> str | None:
    """Points MLflow at the work dir's registry and returns its URI; None (and nothing changed) when it has none:
    no server is set and the embedded store's SQLite file was never written (asking MLflow would create one)."""
    uri = tracking_uri(workdir)
    if uri == embedded_store_uri(workdir):
        if not (workdir / "mlflow.db").exists():
            return None
        _EMBEDDED_URIS_SET.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def configure_tracking(workdir: Path, cfg: TrackingConfig) -> str:
    """Point MLflow at the work directory's store (unless a server is set) and select the experiment."""
    uri = tracking_uri(workdir)
    if uri == embedded_store_uri(workdir):
        _EMBEDDED_URIS_SET.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        # Artifacts go beside the SQLite file only on the embedded default; a server decides its own location.
        embedded = uri == embedded_store_uri(workdir)
        location = (workdir / "mlartifacts").resolve().as_uri() if embedded else None
        mlflow.create_experiment(cfg.experiment, artifact_location=location)
    experiment = mlflow.set_experiment(cfg.experiment)
    return experiment.experiment_id


def start_parent_run(
    workdir: Path, cfg: TrackingConfig, run_name: str, params: dict[str, Any], kind: str = "conversion"
) -> str:
    experiment_id = configure_tracking(workdir, cfg)
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=run_name, tags={STEP_TAG: kind})
    for key, value in flatten(params).items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def end_parent_run(run_id: str, status: str = "FINISHED") -> None:
    MlflowClient().set_terminated(run_id, status=status)


@contextmanager
def step_run(
    step: str, cfg: BaseModel, workdir: Path, tracking: TrackingConfig | None = None, parent_run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one step: nested under the conversion when a parent is given, top-level otherwise
    (the DVC stages run each step in its own process)."""
    configure_tracking(workdir, tracking or TrackingConfig())
    with mlflow.start_run(run_name=step, parent_run_id=parent_run_id, tags={STEP_TAG: step}) as run:
        mlflow.log_params(flatten(cfg.model_dump(mode="json")))
        yield run


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as dotted MLflow params; long values are cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = (value if isinstance(value, str) else json.dumps(value))[:6000]
    return flat


def log_json_artifact(payload: Any, path: Path) -> None:
    """Write a JSON file (it is also a DVC output) and attach it to the active run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    mlflow.log_artifact(str(path))


def log_json_artifact_to_run(run_id: str, payload: Any, path: Path) -> None:
    """Write a JSON file and attach it to a given run (e.g. the parent run, outside any active run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    MlflowClient().log_artifact(run_id, str(path))


def log_numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> None:
    """Log the numeric leaves of a (nested) dict as metrics named with dots, skipping text and None."""
    numeric: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            log_numeric_metrics(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numeric[_metric_name(name)] = float(value)
    if numeric:
        mlflow.log_metrics(numeric)


def _metric_name(name: str) -> str:
    # MLflow metric names allow letters, digits and _-./ and spaces only.
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)
