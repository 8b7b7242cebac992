"""The Prefect flow under Prefect's test harness: a failing step fails the flow and marks the MLflow parent
run FAILED, so a broken conversion never looks finished in the MLflow UI."""

import uuid
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_a_failing_step_fails_the_flow_and_the_parent_run(harness, tmp_path, monkeypatch):
    from flows.llm_to_slm import llm_to_slm

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    empty_log = tmp_path / "empty.jsonl"
    empty_log.write_text("not json at all\n")  # every line quarantined: nothing for S2 onwards
    experiment = f"flow-{uuid.uuid4().hex[:8]}"
    state = llm_to_slm(
        params_path=str(ROOT / "params.yaml"),
        workdir=str(tmp_path / "work"),
        input_path=str(empty_log),
        experiment=experiment,
        return_state=True,
    )
    assert state.is_failed()

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    by_step = {run.data.tags.get("llm2slm.step"): run for run in runs}
    assert by_step["conversion"].info.status == "FAILED"
    assert by_step["collect"].info.status == "FAILED"
    assert set(by_step) == {"conversion", "collect"}  # nothing ran after the failing step
    assert by_step["collect"].data.metrics["quarantined"] == 1.0
    assert (tmp_path / "work" / "data" / "quarantine.jsonl").read_text().count("\n") == 1
