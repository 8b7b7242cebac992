"""The registered model is usable: the pyfunc loads base + adapter from the registry and answers chat requests."""

import uuid
from pathlib import Path

import mlflow

from components import slm
from components.core.schema import CallRecord, ChatMessage
from components.finetune.train import FinetuneConfig, LoraSettings, finetune
from tasks.helpers.registry import log_adapter_model, register_with_alias


def test_registered_adapter_loads_by_alias_and_answers_chat_requests(tiny_model_dir, records, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment(
        f"registry-{uuid.uuid4().hex[:8]}", artifact_location=(tmp_path / "mlartifacts").as_uri()
    )
    # A high learning rate so the adapter visibly moves the random model's greedy answer.
    config = FinetuneConfig(
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=5e-2,
        max_length=256,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
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

    # The registered model answers as base + adapter does here, not as the bare base model would.
    record = CallRecord(
        record_id="0",
        messages=request["messages"],
        tools=request["tools"],
        response=ChatMessage(role="assistant", content=""),
    )

    def local_answer(adapter_dir: Path | None) -> dict:
        model, tokenizer = slm.load_model(tiny_model_dir, adapter_dir=adapter_dir)
        [generation] = slm.generate(model, tokenizer, [record], max_new_tokens=8)
        return slm.parse_completion(generation.text).model_dump(mode="json", exclude_none=True)

    with_adapter, base_only = local_answer(tmp_path / "adapter"), local_answer(None)
    assert with_adapter != base_only, "the adapter did not change the answer: the check below would prove nothing"
    assert answers[0] == with_adapter
