import mlflow
import pandas as pd

from tasks.helpers.evaluation_log import PER_CALL_TABLE, log_dataset, log_per_call_results
from tasks.helpers.tracking import TrackingConfig, configure_tracking


def test_per_call_results_and_datasets_are_browsable_on_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking(tmp_path, TrackingConfig(experiment="evaluation-log"))
    rows = [
        {
            "record_id": "r1",
            "cluster_id": 0,
            "llm": "<tool_call>a</tool_call>",
            "slm_finetuned": "x",
            "full_call_match": 0.0,
        },
        {"record_id": "r2", "cluster_id": 0, "llm": "b", "slm_finetuned": "b", "full_call_match": 1.0},
    ]
    test_split = pd.DataFrame({"record_id": ["r1", "r2"], "cluster_id": [0, 0]})
    with mlflow.start_run() as run:
        log_per_call_results(rows)
        log_dataset(test_split, "test", tmp_path / "splits.parquet", context="evaluation")
    table = mlflow.load_table(PER_CALL_TABLE, run_ids=[run.info.run_id])
    assert list(table["record_id"]) == ["r1", "r2"] and list(table["full_call_match"]) == [0.0, 1.0]
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.tags[0].value) for i in inputs] == [("test", "evaluation")]
