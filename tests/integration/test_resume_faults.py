"""Faults in the middle of a conversion, on the running topology (they reuse the session's conversion).

- The worker dies in the middle of S5 (its process tree SIGKILLed, as when a machine is lost): after a restart,
  a run with `resume=True` skips S1-S4 (their stage locks still match), S5 resumes from its last checkpoint, and the
  conversion ends as a clean one does, with S1-S4's outputs byte for byte unchanged.
- The MLflow server goes away between a model version's creation and its alias: the registration fails and
  leaves no version behind (tasks/helpers/registry.py deletes it once the server is back).
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import deploy_conversion
from tests.integration.services import Topology
from tests.integration.test_topology_faults import eventually, mlflow_back

pytestmark = pytest.mark.integration

UPSTREAM = ("collect", "anonymize", "discover", "select")


def step_task_runs(client, since: datetime) -> list[str]:
    """Names of the step task runs ("S1 collect" ... "S6 evaluate") started since `since`, oldest first."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime
    from prefect.client.schemas.sorting import TaskRunSort

    runs = client.read_task_runs(
        task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since)),
        sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        limit=200,
    )
    names = [run.name.rsplit("-", 1)[0] for run in runs]  # Prefect appends "-<suffix>" to a task run's name
    return [name for name in names if name[:1] == "S" and name[1:2].isdigit()]


def upstream_snapshot(workdir: Path, params: Path) -> dict[str, dict]:
    """The stage lock of each of S1-S4 and the digests of the outputs it names, read now."""
    from flows.steps import load_pipeline_config, step_lock

    steps = load_pipeline_config(params).steps
    snapshot = {}
    for name in UPSTREAM:
        lock = step_lock(name, steps[name], workdir, workdir / "agent-log.jsonl" if name == "collect" else None)
        snapshot[name] = {"lock": lock.path.read_bytes(), "outputs": lock.current()["outputs"]}
    return snapshot


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (the flow run's process runs in a session of its own)."""
    import psutil

    leader = psutil.Process(pid)
    for process in [*leader.children(recursive=True), leader]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_killed_worker_mid_s5_resumes_without_redoing_s1_to_s4(
    topology: Topology, conversion, prefect_client_settings, mlflow_client
):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    # A copy of the finished conversion, with a longer S5 (a checkpoint every 2 steps): only S5's params change,
    # so S1-S4 are up to date in the copy (stage locks name paths relative to the work dir).
    workdir = topology.base / f"resume-{uuid.uuid4().hex[:6]}"
    shutil.copytree(conversion["workdir"], workdir)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["finetune"].update(
        max_steps=6, eval_steps=2, save_steps=2, early_stopping={"patience": 100, "threshold": 0.0}
    )
    # Its own experiment and registered models: the conversion's stay as test_topology.py checks them.
    params["evaluate"]["registered_model_prefix"] = "resumed"
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    before = upstream_snapshot(workdir, workdir / "params.yaml")
    parameters = {
        "params_path": str(workdir / "params.yaml"),
        "workdir": str(workdir),
        "input_path": str(workdir / "agent-log.jsonl"),
        "experiment": f"resume-{uuid.uuid4().hex[:8]}",
        "resume": True,
    }
    deployment = deploy_conversion()
    checkpoints = workdir / "models" / "checkpoints"

    started = datetime.now(UTC)
    first = run_deployment(deployment, timeout=0, parameters=parameters)
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 300
        while not any(checkpoints.glob("cluster_*/checkpoint-*/trainer_state.json")):  # S5 is half-way
            state = client.read_flow_run(first.id).state
            assert not state.is_final(), f"the run ended before S5 checkpointed: {state.type} {state.message}"
            assert time.monotonic() < deadline, "no S5 checkpoint within 300 s"
            time.sleep(0.5)
        worker = topology.servers["cpu-worker"]
        kill_process_tree(worker.pid)
        worker.stop()
        assert client.read_flow_run(first.id).state.is_running()  # nobody is left to report the loss...
        client.set_flow_run_state(first.id, Crashed(message="worker lost (test)"), force=True)  # ...but us
        assert step_task_runs(client, started) == ["S5 finetune"]

        topology.start_worker("cpu-worker")
        restarted = datetime.now(UTC)
        second = run_deployment(deployment, timeout=600, parameters=parameters)
        if not second.state.is_completed():
            pytest.fail(
                f"resumed run ended {second.state.type}: {second.state.message}\n"
                f"{topology.servers['cpu-worker'].log_tail(8000)}"
            )
        assert step_task_runs(client, restarted) == ["S5 finetune", "S6 evaluate"]  # S1-S4 up to date

    assert upstream_snapshot(workdir, workdir / "params.yaml") == before  # S1-S4 outputs byte for byte unchanged
    finetuned = json.loads((workdir / "reports" / "finetune.json").read_text())["clusters"]
    assert finetuned and all(c["resumed_from_step"] and c["resumed_from_step"] > 0 for c in finetuned)
    assert all(c["steps"] == 6 for c in finetuned)
    assert not any(checkpoints.glob("cluster_*/checkpoint-*"))  # removed once the run finished

    # The same end state as the clean conversion: the same clusters converted, the same figures, one version
    # registered with its alias.
    clean = json.loads((conversion["workdir"] / "reports" / "evaluation.json").read_text())["clusters"]
    resumed = json.loads((workdir / "reports" / "evaluation.json").read_text())["clusters"]
    assert [c["cluster_id"] for c in resumed] == [c["cluster_id"] for c in clean]
    for old, new in zip(clean, resumed):
        assert new["scores"].keys() == old["scores"].keys() and new["n_test"] == old["n_test"]
        assert new["scores"]["llm"] == old["scores"]["llm"]
        model = new["registered_model"]
        assert model["name"] == old["registered_model"]["name"].replace("llm2slm-", "resumed-", 1)
        assert model["version"] == "1"  # one version: the killed run never got to S6
        assert str(mlflow_client.get_model_version_by_alias(model["name"], model["alias"]).version) == model["version"]
    shutil.rmtree(workdir, ignore_errors=True)


def test_mlflow_outage_during_registration_leaves_no_half_registered_version(
    topology: Topology, conversion, mlflow_client, monkeypatch
):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.helpers.registry import register_challenger

    model_uri = json.loads((conversion["workdir"] / "reports" / "finetune.json").read_text())["clusters"][0][
        "model_uri"
    ]
    name = f"integration-atomic-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the alias call fails fast...
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    set_alias = MlflowClient.set_registered_model_alias
    restart = threading.Timer(5, topology.launch_http_server, args=("mlflow-server",))

    def server_gone_before_the_alias(self, *args, **kwargs):
        topology.servers["mlflow-server"].stop()  # ...the version exists, the server is gone
        restart.start()  # ...and back 5 s later, for the clean-up
        return set_alias(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", server_gone_before_the_alias)
    try:
        with pytest.raises(MlflowException):
            register_challenger(model_uri, name, {"cluster_label": "outage"}, undo_timeout_s=240)
    finally:
        mlflow_back(topology, restart)
    monkeypatch.undo()
    assert eventually(lambda: mlflow_client.get_registered_model(name))  # the registration got that far...
    assert mlflow_client.search_model_versions(f"name='{name}'") == []  # ...but its version is gone again
