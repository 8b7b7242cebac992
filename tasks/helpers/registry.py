"""The fine-tuned SLM as an MLflow model: a pyfunc that answers OpenAI-style chat requests with base + adapter.

Logging it as a pyfunc (not only the adapter files) lets the registry hold a model that anyone can load with
``mlflow.pyfunc.load_model("models:/<name>@champion")`` and call, the router included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


class AdapterChatModel(mlflow.pyfunc.PythonModel):
    """Input: a list of chat requests ``{"messages": [...], "tools": [...]}``; output: assistant messages."""

    def load_context(self, context):
        from components import slm

        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 256))
        self.model, self.tokenizer = slm.load_model(
            context.model_config["base_model"], adapter_dir=context.artifacts["adapter"]
        )

    def predict(self, context, model_input, params=None):
        from components import slm
        from components.core.schema import CallRecord, ChatMessage

        requests = model_input.to_dict(orient="records") if hasattr(model_input, "to_dict") else model_input
        records = [
            CallRecord(
                record_id=str(index),
                messages=request["messages"],
                tools=request.get("tools") or [],
                response=ChatMessage(role="assistant", content=""),
            )  # the answer is what we generate
            for index, request in enumerate(requests)
        ]
        generations = slm.generate(self.model, self.tokenizer, records, max_new_tokens=self.max_new_tokens)
        return [slm.parse_completion(g.text).model_dump(mode="json", exclude_none=True) for g in generations]


def log_adapter_model(name: str, adapter_dir: Path, base_model: str, max_new_tokens: int = 256) -> str:
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


def register_with_alias(
    model_uri: str,
    name: str,
    alias: str,
    tags: dict[str, str],
    then: Callable[[str], None] | None = None,
    undo_timeout_s: float = 300,
) -> str:
    """Register a new version and point ``alias`` at it (then run ``then(version)``, e.g. a promotion); returns
    the version number. All or nothing: if anything after the version's creation fails (the MLflow server went
    away half-way), the version is deleted again, so the registry never holds a version without its alias."""
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        MlflowClient().set_registered_model_alias(name, alias, version)
        if then is not None:
            then(version)
    except BaseException:
        _retry_until(lambda: _delete_version(name, version), undo_timeout_s)
        raise
    return version


def _delete_version(name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().delete_model_version(name, version)  # its aliases go with it
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":  # a retried delete that already got through
            raise


def _retry_until(action: Callable[[], None], timeout_s: float, every_s: float = 2.0) -> None:
    """Run ``action`` until it succeeds (an outage may outlast the client's own retries) or ``timeout_s`` passes;
    then its last error is raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(every_s)


# ---- champion / challenger lifecycle ------------------------------------------------------------------------
# Every new version is registered as `challenger`; the gate moves `champion` to it. The registered model's tag
# CHAMPION_HISTORY lists the versions that were champion, oldest first, so a rollback knows where to go back to.

CHAMPION = "champion"
CHALLENGER = "challenger"
CHAMPION_HISTORY = "llm2slm.champion_history"


def register_challenger(
    model_uri: str, name: str, tags: dict[str, str], promote_reason: str | None = None, undo_timeout_s: float = 300
) -> str:
    """Register a new version of ``name`` with alias ``challenger`` and, with ``promote_reason``, promote it to
    ``champion``; returns its version number. All or nothing: on a failure the new version is deleted and the
    champion alias and history are back where they were."""
    if promote_reason is None:
        return register_with_alias(model_uri, name, CHALLENGER, tags, undo_timeout_s=undo_timeout_s)
    previous, history = champion_version(name), _champion_history_or_empty(name)

    def promote_or_restore(version: str) -> None:
        try:
            promote(name, version, promote_reason)
        except BaseException:
            _retry_until(lambda: _restore_champion(name, previous, history), undo_timeout_s)
            raise

    return register_with_alias(
        model_uri, name, CHALLENGER, tags, then=promote_or_restore, undo_timeout_s=undo_timeout_s
    )


def _champion_history_or_empty(name: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        return champion_history(name)
    except MlflowException:  # no such registered model yet
        return []


def _restore_champion(name: str, version: str | None, history: list[str]) -> None:
    import json

    client = MlflowClient()
    client.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(history))
    if version is not None:
        client.set_registered_model_alias(name, CHAMPION, version)


def champion_history(name: str) -> list[str]:
    import json

    model = MlflowClient().get_registered_model(name)
    return json.loads(model.tags.get(CHAMPION_HISTORY, "[]"))


def champion_version(name: str) -> str | None:
    """The version the alias ``champion`` points at, or None (no such model, or no champion yet); any other
    registry error (unreadable store, server down) is raised, never read as "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as error:
        # no such registered model / no such alias on it (what MLflow's stores answer for each)
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(name: str, version: str, reason: str) -> None:
    """Point ``champion`` at ``version`` and record it in the history; the reason goes on the version's tags."""
    import json

    client = MlflowClient()
    history = champion_history(name)
    if not history or history[-1] != str(version):
        history.append(str(version))
    client.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(history))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "promotion_reason", reason)


def rollback(name: str) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion version; returns (from, to). The rolled-back version keeps
    its number and gets alias ``challenger``, so it can still be inspected."""
    import json

    client = MlflowClient()
    history = champion_history(name)
    if len(history) < 2:
        raise ValueError(f"{name} has no previous champion to roll back to (champion history: {history or 'empty'})")
    current, previous = history[-1], history[-2]
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_alias(name, CHALLENGER, current)
    client.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(history[:-1]))
    client.set_model_version_tag(name, current, "rolled_back", "true")
    return current, previous


def adapter_of_version(name: str, version: str, destination: Path) -> tuple[str, str]:
    """Download a registered version's adapter; returns (adapter folder, base model it applies to)."""
    import yaml

    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(destination)))
    # MLmodel's pyfunc flavour: `artifacts.adapter.path` (artifacts/<folder name>), `config` = the model_config.
    flavour = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    return str(folder / flavour["artifacts"]["adapter"]["path"]), flavour["config"]["base_model"]
