"""The registered model is usable: the pyfunc loads base + adapter from the registry and answers chat requests."""

import uuid

import mlflow

from components.finetune.train import FinetuneConfig, LoraSettings, finetune
from tasks.helpers.registry import log_adapter_model, register_with_alias


def test_registered_adapter_loads_by_alias_and_answers_chat_requests(tiny_model_dir, records, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment(
        f"registry-{uuid.uuid4().hex[:8]}", artifact_location=(tmp_path / "mlartifacts").as_uri()
    )
    config = FinetuneConfig(
        max_steps=1, per_device_train_batch_size=2, max_length=256, lora=LoraSettings(r=4, alpha=8, dropout=0.0)
    )
    result = finetune(tiny_model_dir, records[:4], config, tmp_path / "adapter")
    with mlflow.start_run(experiment_id=experiment):
        model_uri = log_adapter_model("cluster-0", tmp_path / "adapter", result.base_model, max_new_tokens=8)
    version = register_with_alias(model_uri, "llm2slm-test-cluster-0", "champion", {"cluster_label": "weather"})

    model = mlflow.pyfunc.load_model("models:/llm2slm-test-cluster-0@champion")
    request = {"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": records[0].tools}
    answers = model.predict([request, request])
    assert version == "1"
    assert len(answers) == 2 and all(answer["role"] == "assistant" for answer in answers)
    assert answers[0] == answers[1]  # greedy decoding: the same request gets the same answer
