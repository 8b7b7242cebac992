"""One refresh with the tiny random-weight llama doing the real work of S4-S6: a real S5 LoRA fine-tune (two
steps) and real generation for selection and evaluation. Only S3's sentence embeddings and UMAP keep their
stand-ins (one-hot of the called tool; the real S3 runs in tests/unit/discover). The gate's decisions over three
refreshes are in test_refresh.py, which replaces training and generation with a formula to stay fast."""

import json
import uuid
from pathlib import Path

import mlflow
import yaml

from tests.flow.test_refresh import ROOT, Identity, harness, tool_embeddings, write_batch  # noqa: F401
from tests.support.tiny_models import build_tiny_model, write_tiny_catalog


def test_refresh_fine_tunes_and_generates_with_a_real_tiny_model(harness, tmp_path, monkeypatch):  # noqa: F811
    import tasks.discover
    import tasks.evaluate
    import tasks.finetune
    import tasks.refresh
    from components.discover.discovery import discover
    from flows.refresh import refresh

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(
        tasks.discover,
        "discover",
        lambda records, cfg, previous=None, **_: discover(
            records, cfg, embeddings=tool_embeddings(records), reducer=Identity(), previous=previous
        ),
    )
    trained, generated = [], []
    real_finetune, real_generate = tasks.finetune.finetune, tasks.refresh.generate_answers

    # Spies only: they record that the real code ran and pass every call through unchanged.
    def finetune_spy(*args, **kwargs):
        trained.append(real_finetune(*args, **kwargs))
        return trained[-1]

    def generate_spy(*args, **kwargs):
        answers = real_generate(*args, **kwargs)
        generated.append((kwargs.get("adapter_dir"), answers))
        return answers

    monkeypatch.setattr(tasks.finetune, "finetune", finetune_spy)
    monkeypatch.setattr(tasks.refresh, "generate_answers", generate_spy)  # imported by name in each task module
    monkeypatch.setattr(tasks.evaluate, "generate_answers", generate_spy)
    tiny = build_tiny_model(tmp_path / "tiny")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["anonymize"]["entities"] = ["EMAIL_ADDRESS", "PHONE_NUMBER"]
    params["anonymize"]["curate"]["near_duplicate_threshold"] = None
    params["discover"].update(
        {
            "hdbscan": {"min_cluster_size": 4, "min_samples": 2},
            "test_fraction": 0.3,
            "max_test_per_cluster": 3,
            "min_cluster_size_to_convert": 8,
            "max_clusters_to_convert": 1,
        }
    )
    params["select"].update(candidates=["tiny"], catalog=write_tiny_catalog(tmp_path / "catalog.yaml", tiny))
    params["finetune"].update(max_steps=2, per_device_train_batch_size=2, max_length=256)
    params["refresh"]["max_fresh_test_per_cluster"] = 3
    params["evaluate"]["engine"] = "transformers"  # the spied path (the default engine: test_onnx_engine.py)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    work, experiment = tmp_path / "work", f"refresh-tiny-{uuid.uuid4().hex[:8]}"

    result = refresh(
        params_path=str(params_path),
        workdir=str(work),
        experiment=experiment,
        input_path=str(write_batch(tmp_path / "batch.jsonl", 1, {"get_weather": 14, "get_time": 6})),
    )

    [entry] = result["clusters"]
    assert "get_weather" in entry["label"]
    # S5 really trained: two optimizer steps, a LoRA adapter on disk, its loss logged per step.
    [training] = trained
    assert training.steps == 2 and len(training.loss_history) == 2 and training.base_model == str(tiny)
    assert (Path(training.adapter_dir) / "adapter_model.safetensors").is_file()
    # The fine-tuned tiny model really answered S6's held-out calls, each with a measured latency.
    tuned = [
        answers for adapter_dir, answers in generated if adapter_dir and Path(adapter_dir) == Path(training.adapter_dir)
    ]
    # (S6 and the refresh ask for each answer's confidence too: (text, latency, confidence).)
    assert tuned and all(answer[0] and answer[1] > 0 for answers in tuned for answer in answers)
    systems = entry["systems"]
    assert "challenger" in systems and 0.0 <= systems["challenger"]["score"] <= 1.0
    # Whatever the gate decided, the challenger is registered and its alias says so.
    registered = entry["registered_model"]
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    version = client.get_model_version_by_alias(registered["name"], registered["alias"])
    assert str(version.version) == registered["version"]
    assert registered["alias"] == ("champion" if entry["promoted"] else "challenger")
    assert (
        json.loads((work / "reports" / "promotions.jsonl").read_text().splitlines()[-1])["cluster_id"]
        == (entry["cluster_id"])
    )
