"""The fine-tuned SLM as an MLflow model: a pyfunc that answers OpenAI-style chat requests with base + adapter.

Logging it as a pyfunc (not only the adapter files) lets the registry hold a model that anyone can load with
``mlflow.pyfunc.load_model("models:/<name>@champion")`` and call, the router included.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


class AdapterChatModel(mlflow.pyfunc.PythonModel):
    """Input: a list of chat requests ``{"messages": [...], "tools": [...]}``; output: assistant messages."""

    def load_context(self, context):
        from components import slm

        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 96))
        self.model, self.tokenizer = slm.load_model(context.model_config["base_model"],
                                                    adapter_dir=context.artifacts["adapter"])

    def predict(self, context, model_input, params=None):
        from components import slm
        from components.schema import CallRecord, ChatMessage

        requests = model_input.to_dict(orient="records") if hasattr(model_input, "to_dict") else model_input
        records = [
            CallRecord(record_id=str(index), messages=request["messages"], tools=request.get("tools") or [],
                       response=ChatMessage(role="assistant", content=""))  # the answer is what we generate
            for index, request in enumerate(requests)
        ]
        generations = slm.generate(self.model, self.tokenizer, records, max_new_tokens=self.max_new_tokens)
        return [slm.parse_completion(g.text).model_dump(mode="json", exclude_none=True) for g in generations]


def log_adapter_model(name: str, adapter_dir: Path, base_model: str, max_new_tokens: int = 96) -> str:
    """Log the adapter as a pyfunc model in the active run; returns its model URI."""
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=AdapterChatModel(),
        artifacts={"adapter": str(adapter_dir)},
        model_config={"base_model": base_model, "max_new_tokens": max_new_tokens},
        # Explicit requirements: inferring them would import-scan the whole environment (slow, and noisy).
        pip_requirements=["llm2slm", "torch", "transformers", "peft"],
    )
    return info.model_uri


def register_with_alias(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register a new version and point ``alias`` at it; returns the version number."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return str(version.version)
