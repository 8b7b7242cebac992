"""MLflow wiring: the store lives in the work dir, step runs nest under the conversion's parent run."""

import uuid

import mlflow

from components.collect.ingest import CollectConfig
from tasks.helpers.tracking import (
    TrackingConfig,
    end_parent_run,
    flatten,
    log_numeric_metrics,
    start_parent_run,
    step_run,
)


def test_flatten_dots_nested_keys_and_serializes_values():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {}}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "x",
        "e": "{}",
    }


def test_step_runs_nest_under_the_parent_in_the_workdir_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = TrackingConfig(experiment=f"test-{uuid.uuid4().hex[:8]}")
    parent = start_parent_run(tmp_path, tracking, "conversion", {"collect": {"input": "x.jsonl"}})
    cfg = CollectConfig()
    with step_run("collect", cfg, tmp_path, tracking, parent) as run:
        log_numeric_metrics({"records": 3, "by_source": {"chat": 2}, "label": "text", "ok": True})
        child_id = run.info.run_id
    end_parent_run(parent)

    assert (tmp_path / "mlflow.db").exists()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["llm2slm.step"] == "collect"
    assert child.data.params["output"] == cfg.output
    assert child.data.metrics == {"records": 3.0, "by_source.chat": 2.0}
    assert client.get_run(parent).info.status == "FINISHED"
    experiment = client.get_experiment_by_name(tracking.experiment)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()


def test_a_second_workdir_in_the_same_process_gets_its_own_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.helpers.tracking import configure_tracking, tracking_uri

    configure_tracking(tmp_path / "first", TrackingConfig(experiment="a"))
    assert tracking_uri(tmp_path / "second").endswith("second/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(tmp_path / "second") == "http://127.0.0.1:5999"
