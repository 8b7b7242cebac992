"""Faults on the running topology, after the conversion (they reuse its servers and flow run).

- Postgres restarts: the Prefect server recovers, the finished flow run is still there, new runs can be created.
- The MLflow server goes away: with no retry budget the failure names the server and nothing is written; with the
  workers' budget (MLFLOW_HTTP_REQUEST_* of infra/topology.yaml: exponential back-off) the call waits and the run
  is recorded once the server is back.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.services import Topology

pytestmark = pytest.mark.integration


def eventually(check, timeout_s: float = 120, every_s: float = 1.0):
    """The first truthy result of `check()` within `timeout_s`; the last error otherwise."""
    deadline, last_error = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # the server may answer 5xx while it reconnects
            last_error = error
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s; last error: {last_error!r}")


def mlflow_back(topology: Topology, restart: threading.Timer) -> None:
    """After an MLflow outage, whichever way the test ended: the pending restart done or cancelled, the server up."""
    restart.cancel()
    if restart.is_alive():
        restart.join()
    if not topology.servers["mlflow-server"].running():
        topology.launch_http_server("mlflow-server")
    topology.servers["mlflow-server"].wait_healthy(240)


def test_prefect_server_recovers_from_a_postgres_restart_and_loses_no_flow_run(
    topology: Topology, conversion, prefect_client_settings
):
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.states import Scheduled

    def all_runs(client) -> dict:
        # limit and sort explicit: left None, the 3.8 client sends nulls that the 3.8 server answers 422.
        return {run.id: run.state_type for run in client.read_flow_runs(limit=200, sort=FlowRunSort.ID_DESC)}

    with get_client(sync_client=True) as client:
        before = all_runs(client)
        assert conversion["flow_run"].id in before
        deployment = client.read_deployment_by_name("llm_to_slm/integration")

    postgres_pid = topology.servers["postgres"].pid
    topology.servers["postgres"].stop()
    topology.start_postgres()
    assert topology.servers["postgres"].pid != postgres_pid

    with get_client(sync_client=True) as client:
        after = eventually(lambda: all_runs(client))
        assert after == before
        # Writes work again: schedule a run for tomorrow (no worker picks it up now) and remove it.
        later = datetime.now(UTC) + timedelta(days=1)
        created = eventually(
            lambda: client.create_flow_run_from_deployment(
                deployment.id,
                state=Scheduled(scheduled_time=later),
                parameters={"params_path": str(conversion["params"]), "workdir": str(conversion["workdir"])},
            )
        )
        assert client.read_flow_run(created.id).state.is_scheduled()
        client.delete_flow_run(created.id)
    assert topology.servers["prefect-server"].running()


def test_mlflow_outage_fails_clearly_past_the_retry_budget_and_is_bridged_by_back_off(
    topology: Topology, conversion, monkeypatch
):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.helpers.tracking import TrackingConfig, start_parent_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", topology.mlflow_url)
    client = MlflowClient(tracking_uri=topology.mlflow_url)
    down, bridged = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("down", "outage"))
    restart = threading.Timer(5, topology.launch_http_server, args=("mlflow-server",))
    topology.servers["mlflow-server"].stop()
    try:
        # No retry budget: a clear error naming the server, nothing written.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        with pytest.raises(MlflowException) as failure:
            start_parent_run(conversion["workdir"], TrackingConfig(experiment=down), "down", {})
        assert f"127.0.0.1:{topology.ports['mlflow-server']}" in str(failure.value)

        # The workers' budget (infra/topology.yaml): the server comes back 5 s later and the call gets through.
        worker_env = topology.service_env("cpu-worker")
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
            monkeypatch.setenv(name, worker_env[name])
        restart.start()
        started = time.monotonic()
        run_id = start_parent_run(conversion["workdir"], TrackingConfig(experiment=bridged), "outage", {"a": 1})
        waited = time.monotonic() - started
    finally:  # the server is back for whatever runs next, whichever way this test ended
        mlflow_back(topology, restart)
    assert waited >= 5  # the call really waited for the server
    run = client.get_run(run_id)
    assert run.data.params == {"a": "1"} and run.info.status == "RUNNING"
    assert client.get_experiment_by_name(down) is None
