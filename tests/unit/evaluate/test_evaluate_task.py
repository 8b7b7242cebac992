"""S6 as a task on a hand-made work directory: what lands in MLflow beside the figures (one row per held-out call,
the data as run inputs), and the learning curve trained with S5's own code on the tiny llama."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from components.core.schema import CallRecord, write_records, write_table
from components.evaluate.evaluation import EvaluateConfig
from components.evaluate.learning_curve import LearningCurveSettings
from components.finetune.train import FinetuneConfig
from components.slm.prompt import render_target
from tasks.helpers.evaluation_log import PER_CALL_TABLE
from tasks.helpers.tracking import TrackingConfig
from tests.support.tiny_models import CITIES, weather_record

N_TRAIN, N_TEST = 16, 4
TINY_TRAINING = FinetuneConfig(max_steps=2, per_device_train_batch_size=2, max_length=256, seed=0)


def work_records() -> list[CallRecord]:
    # one conversation per call: each asks about its own place
    return [weather_record(i, f"{CITIES[i % len(CITIES)]} {i}") for i in range(N_TRAIN + N_TEST)]


def prepare_workdir(work: Path, model_ref: str, adapter_dir: str = "unused", n_train: int = N_TRAIN) -> EvaluateConfig:
    """S1-S5's outputs for one converted tool-call cluster: 16 training and 4 held-out calls. S6 answers through
    transformers eager, the path these tests' stand-ins replace (the default engine's S6 test:
    tests/unit/slm/test_onnx_engine.py)."""
    cfg = EvaluateConfig(engine="transformers")
    records = work_records()
    write_records(records, work / cfg.curated)
    write_records(records, work / cfg.collected)
    ids = [r.record_id for r in records]
    write_table(
        pd.DataFrame({"record_id": ids, "cluster_id": 0, "split": ["train"] * N_TRAIN + ["test"] * N_TEST}),
        work / cfg.splits,
    )
    write_table(pd.DataFrame({"record_id": ids, "cluster_id": 0}), work / cfg.assignments)
    cluster = {"cluster_id": 0, "label": "get_weather", "output_kind": "tool_call"}
    leaderboard = {"clusters": [{**cluster, "selected": "tiny", "selected_ref": model_ref}]}
    (work / cfg.leaderboard).parent.mkdir(parents=True, exist_ok=True)
    (work / cfg.leaderboard).write_text(json.dumps(leaderboard))
    test_ids = ids[N_TRAIN:]
    write_table(
        pd.DataFrame({"cluster_id": 0, "candidate": "tiny", "record_id": test_ids, "text": "no", "latency_ms": 5.0}),
        work / cfg.base_predictions,
    )
    trained = {"cluster_id": 0, "n_train": n_train, "base_model": model_ref, "adapter_dir": adapter_dir}
    (work / cfg.finetune_summary).write_text(json.dumps({"clusters": [{**trained, "model_uri": "unused"}]}))
    return cfg


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> TrackingConfig:
    import tasks.evaluate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tasks.evaluate, "register_challenger", lambda *args, **kwargs: "1")  # no model logged
    return TrackingConfig(experiment=f"s6-{uuid.uuid4().hex[:8]}")


def evaluate_run(work: Path, experiment: str) -> mlflow.entities.Run:
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    [run] = mlflow.search_runs(
        experiment_names=[experiment], filter_string="tags.`llm2slm.step` = 'evaluate'", output_format="list"
    )
    return run


def test_s6_logs_one_row_per_held_out_call_and_its_data_as_run_inputs(tmp_path, monkeypatch, tracking):
    import tasks.evaluate

    def half_right(reference, records, *args, **kwargs):
        return [(render_target(r.response) if i < 2 else "no idea", 12.0) for i, r in enumerate(records)]

    monkeypatch.setattr(tasks.evaluate, "generate_answers", half_right)
    work = tmp_path / "work"
    cfg = prepare_workdir(work, "unused")

    evaluation = tasks.evaluate.evaluate_task.fn(cfg, work, tracking)

    [entry] = evaluation["clusters"]
    assert entry["scores"]["slm_finetuned"]["full_call_match"] == 0.5
    assert "learning_curve" not in entry  # off by default
    run = evaluate_run(work, tracking.experiment)
    table = mlflow.load_table(PER_CALL_TABLE, run_ids=[run.info.run_id])
    assert len(table) == N_TEST and list(table.record_id) == [f"r{i}" for i in range(N_TRAIN, N_TRAIN + N_TEST)]
    assert {"cluster_id", "request", "llm", "slm_base", "slm_finetuned", "slm_finetuned.latency_ms"} <= set(table)
    for metric in ("function_name_accuracy", "argument_accuracy", "full_call_match", "valid_json", "schema_valid"):
        assert {f"slm_base.{metric}", f"slm_finetuned.{metric}"} <= set(table)
    assert list(table["slm_finetuned.full_call_match"]) == [1.0, 1.0, 0.0, 0.0]
    assert table.request[0] == f"What is the weather in {CITIES[N_TRAIN % len(CITIES)]} {N_TRAIN}?"
    assert table.llm[0].startswith("<tool_call>") and set(table.slm_base) == {"no"}
    # The curated calls and the converted clusters' splits are the run's inputs, each with a digest and its source.
    inputs = {i.dataset.name: i for i in mlflow.get_run(run.info.run_id).inputs.dataset_inputs}
    assert {name: i.tags[0].value for name, i in inputs.items()} == {
        "curated": "curated",
        "train": "training",
        "test": "evaluation",
    }
    assert all(i.dataset.digest for i in inputs.values())
    assert str(work / cfg.curated) in inputs["curated"].dataset.source
    assert str(work / cfg.splits) in inputs["test"].dataset.source
    assert json.loads(inputs["test"].dataset.profile)["num_rows"] == N_TEST
    assert json.loads(inputs["train"].dataset.profile)["num_rows"] == N_TRAIN


def test_a_cluster_below_parity_gets_a_learning_curve_trained_as_s5_trains(tmp_path, tiny_model_dir, tracking):
    import tasks.evaluate
    from components.finetune.train import finetune

    work = tmp_path / "work"
    train = work_records()[:N_TRAIN]
    adapter = finetune(tiny_model_dir, train, TINY_TRAINING, work / "models" / "adapters" / "cluster_0")
    cfg = prepare_workdir(work, tiny_model_dir, adapter.adapter_dir, adapter.n_train)
    cfg = cfg.model_copy(
        update={
            "finetune": TINY_TRAINING,
            "learning_curve": LearningCurveSettings(enabled=True, fractions=[0.25, 0.5, 1.0]),
            "max_new_tokens": 32,
        }
    )

    evaluation = tasks.evaluate.evaluate_task.fn(cfg, work, tracking)

    [entry] = evaluation["clusters"]
    curve = entry["learning_curve"]
    sizes = [p["n_train"] for p in curve["points"]]
    assert sizes == [4, 8, N_TRAIN] and [p["fraction"] for p in curve["points"]] == [0.25, 0.5, 1.0]
    # the full share is S5's adapter as S6 scored it, not a second training run
    assert curve["points"][-1]["score"] == entry["scores"]["slm_finetuned"]["full_call_match"]
    assert {"ceiling", "ceiling_ci95", "calls_for_target", "calls_for_target_ci95", "reachable", "verdict"} <= set(
        curve
    )
    assert curve["target"] == entry["parity_bar"] and curve["verdict"]
    assert (work / cfg.learning_curve.output_dir / "cluster_0" / "n_4" / "adapter_model.safetensors").is_file()
    saved = json.loads((work / cfg.evaluation).read_text())
    assert saved["clusters"][0]["learning_curve"] == curve
    assert "Learning curve" in (work / cfg.report).read_text()
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = evaluate_run(work, tracking.experiment)
    history = client.get_metric_history(run.info.run_id, "cluster_0.learning_curve.full_call_match")
    assert sorted(m.step for m in history) == sizes
    assert "cluster_0.learning_curve.target" in run.data.metrics


SURE = {"mean_logprob": -0.02, "min_logprob": -0.1, "name_logprob": -0.05, "value_logprob": -0.03}
UNSURE = {"mean_logprob": -0.9, "min_logprob": -3.0, "name_logprob": -2.0, "value_logprob": -1.5}


def half_right_and_sure_of_it(reference, records, *args, with_confidence=False, **kwargs):
    """A stand-in SLM right (and sure) on the first two held-out calls, wrong (and unsure) on the rest."""
    assert with_confidence  # S6 asks the eager engine for each answer's confidence
    return [
        (render_target(r.response), 12.0, SURE) if i < 2 else ("no idea", 30.0, UNSURE) for i, r in enumerate(records)
    ]


def evaluate_half_right_and_sure(tmp_path, monkeypatch, tracking):
    """S6 on a prepared work dir with that stand-in, the gate's bar lowered to fit 4 held-out calls."""
    import tasks.evaluate
    from components.evaluate.promotion import PromotionPolicy

    monkeypatch.setattr(tasks.evaluate, "generate_answers", half_right_and_sure_of_it)
    work = tmp_path / "work"
    cfg = prepare_workdir(work, "unused")
    cfg = cfg.model_copy(update={"promotion": PromotionPolicy(min_test_calls=2, min_coverage=0.2, selective_folds=4)})
    return work, cfg, tasks.evaluate.evaluate_task.fn(cfg, work, tracking)


def test_s6_gates_a_cluster_selective_from_the_answers_confidence_and_routes_it_with_its_gate_file(
    tmp_path, monkeypatch, tracking
):
    """generation → confidence features → calibrator → gate → evaluation.json → summary → router.yaml, with the
    SLM right (and sure) on half the held-out calls; the gate's bar is lowered to fit 4 held-out calls."""
    import yaml

    work, cfg, evaluation = evaluate_half_right_and_sure(tmp_path, monkeypatch, tracking)

    [entry] = evaluation["clusters"]
    assert not entry["promoted"] and entry["mode"] == "selective"
    figures = entry["selective"]
    assert figures["coverage"] == 0.5 and figures["accepted_accuracy"] == 1.0
    assert (figures["accepted_calls"], figures["deferred_calls"]) == (2, 2)
    summary = evaluation["summary"]
    assert summary["clusters_selective"] == [0] and summary["calls_at_parity"] == (N_TRAIN + N_TEST) // 2
    router = yaml.safe_load((work / cfg.router_config).read_text())
    route = router["clusters"][0]
    assert route["mode"] == "selective" and route["threshold"] == figures["threshold"]
    gate = json.loads(Path(route["calibrator"]).read_text())
    assert Path(route["calibrator"]) == work / cfg.selective_gates / "cluster_0.json"
    assert gate["features"] and gate["threshold"] == figures["threshold"]
    assert json.loads((work / cfg.metrics).read_text())["cluster_0"]["selective"]["coverage"] == 0.5


def stored_traces(work: Path, run_id: str) -> dict[str, dict]:
    """The evaluate run's traces as the SQLite store holds them: tags, span names and assessments per trace."""
    import sqlite3

    db = sqlite3.connect(work / "mlflow.db")
    ids = [
        row[0]
        for row in db.execute(
            "SELECT request_id FROM trace_request_metadata WHERE key = 'mlflow.sourceRun' AND value = ?", (run_id,)
        )
    ]
    traces = {}
    for trace_id in ids:
        tags = dict(db.execute("SELECT key, value FROM trace_tags WHERE request_id = ?", (trace_id,)).fetchall())
        spans = sorted(row[0] for row in db.execute("SELECT name FROM spans WHERE trace_id = ?", (trace_id,)))
        assessments = {
            name: (kind, json.loads(value))
            for name, kind, value in db.execute(
                "SELECT name, assessment_type, value FROM assessments WHERE trace_id = ?", (trace_id,)
            )
        }
        traces[tags["record_id"]] = {"tags": tags, "spans": spans, "assessments": assessments}
    return traces


def test_s6_logs_each_held_out_call_as_a_trace_of_its_run_with_the_llm_answer_and_a_verdict_per_metric(
    tmp_path, monkeypatch, tracking
):
    work, _, evaluation = evaluate_half_right_and_sure(tmp_path, monkeypatch, tracking)

    [entry] = evaluation["clusters"]
    assert entry["mode"] == "selective"
    run = evaluate_run(work, tracking.experiment)
    traces = stored_traces(work, run.info.run_id)
    test_records = work_records()[N_TRAIN:]
    assert sorted(traces) == sorted(r.record_id for r in test_records)
    for i, record in enumerate(test_records):
        trace = traces[record.record_id]
        right = i < 2
        assert trace["spans"] == ["held-out call", "slm_base", "slm_finetuned"]
        assert trace["tags"]["cluster_id"] == "0"
        assert trace["tags"]["llm2slm.outcome"] == ("match" if right else "miss")
        # the shipped gate keeps the sure (right) answers with the SLM and defers the others to the LLM
        assert trace["tags"]["llm2slm.route"] == ("slm" if right else "llm")
        assessments = trace["assessments"]
        assert assessments["expected_response"] == ("expectation", render_target(record.response))
        assert assessments["full_call_match"] == ("feedback", right)
        assert assessments["slm_base.full_call_match"] == ("feedback", False)
        assert {"function_name_accuracy", "argument_accuracy", "confidence"} <= set(assessments)
        confidence = assessments["confidence"][1]
        assert (confidence >= entry["selective"]["threshold"]) == right
    assert run.data.tags["llm2slm.traces"] == f"{N_TEST} of {N_TEST} held-out calls"


def test_s6_logs_at_most_max_traces_held_out_calls(tmp_path, monkeypatch, tracking):
    import tasks.evaluate

    monkeypatch.setattr(tasks.evaluate, "generate_answers", half_right_and_sure_of_it)
    work = tmp_path / "work"
    cfg = prepare_workdir(work, "unused").model_copy(update={"max_traces": 3})

    tasks.evaluate.evaluate_task.fn(cfg, work, tracking)

    run = evaluate_run(work, tracking.experiment)
    assert len(stored_traces(work, run.info.run_id)) == 3
    assert run.data.tags["llm2slm.traces"] == f"3 of {N_TEST} held-out calls"
