"""Where S5 runs: in-process by default, or as a sub-flow run of the configured GPU deployment; which failures a
Prefect retry (which resumes from the last checkpoint) is worth."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest

from components.finetune.runs import UnsupportedDeviceError
from components.finetune.train import Dispatch, FinetuneConfig
from flows.finetune import run_finetune
from tasks.finetune import retry_on_interrupted_training
from tasks.helpers.tracking import TrackingConfig

# A summary line as S5 writes it (what reports/finetune.json's reader requires of one).
TRAINED_LINE = {"cluster_id": 0, "label": "w", "n_train": 3, "base_model": "base", "adapter_dir": "a/cluster_0"}


def completed_run(completed: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        id=uuid4(), state=SimpleNamespace(is_completed=lambda: completed, name="Completed" if completed else "Crashed")
    )


def test_configured_deployment_receives_the_step_and_its_result_is_read_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import prefect.deployments

    calls: list[dict] = []
    flow_runs: list[SimpleNamespace] = []

    def fake_run_deployment(**kwargs):
        """A worker: writes its summary where the settings it was handed say, naming its own flow run."""
        calls.append(kwargs)
        flow_run = completed_run()
        flow_runs.append(flow_run)
        worker_cfg = FinetuneConfig.model_validate(kwargs["parameters"]["cfg"])
        summary_path = Path(kwargs["parameters"]["workdir"]) / worker_cfg.summary
        summary_path.parent.mkdir(parents=True)
        summary_path.write_text(json.dumps({"clusters": [{**TRAINED_LINE, "flow_run": str(flow_run.id)}]}))
        return flow_run

    monkeypatch.setattr(prefect.deployments, "run_deployment", fake_run_deployment)
    cfg = FinetuneConfig(
        summary="reports/s5/finetune-summary.json",
        dispatch=Dispatch(deployment="s5-finetune/gpu", work_queue="h100", tags=["gpu"]),
    )
    summary = run_finetune(cfg, tmp_path, TrackingConfig(experiment="x"), "parent-1")
    written = json.loads((tmp_path / "reports/s5/finetune-summary.json").read_text())
    # The summary is the one this dispatch's worker wrote at the configured path, read back as it is.
    assert summary == written == {"clusters": [{**TRAINED_LINE, "flow_run": str(flow_runs[0].id)}]}
    (call,) = calls
    assert (call["name"], call["work_queue_name"], call["tags"]) == ("s5-finetune/gpu", "h100", ["gpu"])
    assert call["parameters"]["workdir"] == str(tmp_path) and call["parameters"]["parent_run_id"] == "parent-1"
    assert FinetuneConfig.model_validate(call["parameters"]["cfg"]) == cfg  # the worker gets the same settings
    assert call["parameters"]["tracking"] == {"experiment": "x"}

    monkeypatch.setattr(prefect.deployments, "run_deployment", lambda **kwargs: completed_run(False))
    with pytest.raises(RuntimeError, match="s5-finetune/gpu.* ended Crashed"):
        run_finetune(cfg, tmp_path)


@pytest.mark.parametrize(
    "error, retried",
    [
        (RuntimeError("CUDA out of memory"), True),
        (OSError("disk busy"), True),
        (ValueError("no training records"), False),
        (FileNotFoundError("records.parquet"), False),
        (UnsupportedDeviceError("QLoRA needs a CUDA GPU"), False),
    ],
)
def test_only_transient_failures_are_retried(error: Exception, retried: bool) -> None:
    def result():
        raise error

    assert retry_on_interrupted_training(None, None, SimpleNamespace(result=result)) is retried


def test_task_trains_logs_and_then_reuses_the_finished_adapter(tiny_model_dir, records, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    from components.core.schema import write_records, write_table
    from components.finetune.train import LoraSettings
    from tasks.finetune import finetune_task

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_records(records, tmp_path / "data/curated/records.parquet")
    write_table(
        pd.DataFrame({"record_id": [r.record_id for r in records], "cluster_id": 0, "split": "train"}),
        tmp_path / "data/splits/splits.parquet",
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/leaderboard.json").write_text(
        json.dumps(
            {
                "clusters": [
                    {"cluster_id": 0, "label": "weather", "selected": "tiny", "selected_ref": tiny_model_dir},
                    {"cluster_id": 1, "label": "nothing fits", "selected": None},
                ]
            }
        )
    )
    cfg = FinetuneConfig(
        max_steps=2,
        max_length=256,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        overrides={"0": {"learning_rate": 5e-3, "precision": "bf16"}},
    )

    first = finetune_task.fn(cfg, tmp_path, TrackingConfig(experiment="s5"))
    (entry,) = first["clusters"]
    assert first["skipped"][0]["cluster_id"] == 1 and not entry["reused"] and entry["steps"] == 2
    # Autocast on CPU over a base loaded in bf16 (finetune.bf16_base_weights; the LoRA weights stay fp32).
    assert (entry["device"], entry["dtype"], entry["precision"]) == ("cpu", "bfloat16", "bf16")
    assert entry["prompt_spec"]["tools"] == "dropped" and len(entry["data_version"]["train_split_sha256"]) == 64
    assert (Path(entry["adapter_dir"]) / "prompt_spec.json").exists()
    assert json.loads((tmp_path / "reports/finetune.json").read_text()) == json.loads(json.dumps(first))

    second = finetune_task.fn(cfg, tmp_path, TrackingConfig(experiment="s5"))
    assert second["clusters"][0]["reused"] and second["clusters"][0]["adapter_dir"] == entry["adapter_dir"]

    runs = mlflow.search_runs(experiment_names=["s5"], order_by=["start_time ASC"])
    assert list(runs["params.cluster_0.learning_rate"]) == ["0.005", "0.005"]  # the override, as trained
    assert list(runs["metrics.cluster_0.reused"]) == [0.0, 1.0]
    assert list(runs["params.cluster_0.precision_used"]) == ["bf16", "bf16"]
    history = mlflow.tracking.MlflowClient().get_metric_history(runs.run_id[0], "cluster_0.train_loss")
    assert [metric.step for metric in history] == [1, 2]
