"""The native topology, started once for the integration tests and stopped by PID at the end, also on failure."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from components.core.config import load_params
from tests.integration.services import ROOT, Topology, start_topology
from tests.support.tiny_models import write_tiny_catalog

DEPLOYMENT = "integration"


@pytest.fixture(scope="session")
def topology():
    # Not under pytest's tmp dir: that is 0700 root-owned and Postgres runs as its own user when we are root.
    base = Path(tempfile.mkdtemp(prefix="llm2slm-topology-"))
    base.chmod(0o711)
    running = start_topology(base)
    try:
        yield running
    finally:
        running.stop_all()
        leftover = [name for name, server in running.servers.items() if server.running()]
        shutil.rmtree(base, ignore_errors=True)
        assert not leftover, f"servers still running: {leftover}"


def small_params(workdir: Path, model_dir: str) -> Path:
    """The real params shrunk to a small slice: few records, one cluster, a tiny model, two LoRA steps, Dask."""
    params = load_params(ROOT / "params.yaml")
    params["demo_data"].update(kind="agent", conversations=30, malformed_lines=2, pii_share=0.3)
    params["discover"].update(
        min_cluster_size_to_convert=8,
        max_clusters_to_convert=1,
        max_test_per_cluster=3,
        hdbscan={"min_cluster_size": 8, "min_samples": 3},
    )
    write_tiny_catalog(workdir / "catalog.yaml", model_dir, name="tiny-llama", licence="Apache-2.0")
    # Relative to the work dir, like every path of params: a copy of the work dir keeps its S4 stage lock.
    params["select"].update(candidates=["tiny-llama"], catalog="catalog.yaml", max_new_tokens=8)
    params["finetune"].update(max_steps=2, max_length=512)
    params["evaluate"].update(max_new_tokens=8)
    # S2 and S3 on a local Dask cluster through prefect-dask, two record partitions each.
    # Threads, not processes: on 2 cores, two more interpreters loading spaCy and torch cost minutes here.
    params["execution"] = {"task_runner": "dask", "dask_workers": 2, "dask_processes": False, "partitions": 2}
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def conversion_inputs(topology: Topology):
    """A work directory with the small params, the demo log and a tiny random-weight model."""
    from components.collect.demo_data import DemoDataConfig, build_demo_calls
    from tests.support.tiny_models import build_tiny_model

    workdir = topology.base / "work"
    workdir.mkdir()
    model_dir = build_tiny_model(topology.base / "tiny-model")
    params_path = small_params(workdir, model_dir)
    lines = build_demo_calls(DemoDataConfig(**load_params(params_path)["demo_data"]))
    input_path = workdir / "agent-log.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    return {"workdir": workdir, "params": params_path, "input": input_path}


@pytest.fixture(scope="session")
def prefect_client_settings(topology: Topology):
    """Point this test process's Prefect client at the topology's server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(
        {PREFECT_API_URL: topology.prefect_api_url, PREFECT_HOME: str(topology.base / "prefect-home")}
    ):
        yield


@pytest.fixture(scope="session")
def mlflow_client(topology: Topology):
    from mlflow.tracking import MlflowClient

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = topology.mlflow_url
    try:
        yield MlflowClient(tracking_uri=topology.mlflow_url, registry_uri=topology.mlflow_url)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def deploy_conversion(pool: str = "cpu") -> str:
    """Deploy the flow from this checkout to the process pool (Python API; no prefect.yaml needed)."""
    from prefect import flow

    source = flow.from_source(source=str(ROOT), entrypoint="flows/llm_to_slm.py:llm_to_slm")
    # to_deployment().apply() rather than .deploy(): deploy() first lists the pool's workers, a request the
    # 3.8 server answers 422 (the client sends limit=null); apply() registers the same deployment.
    source.to_deployment(name=DEPLOYMENT, work_pool_name=pool).apply()
    return f"llm_to_slm/{DEPLOYMENT}"


@pytest.fixture(scope="session")
def conversion(topology: Topology, conversion_inputs, prefect_client_settings):
    from prefect.deployments import run_deployment

    experiment = f"integration-{uuid.uuid4().hex[:8]}"
    flow_run = run_deployment(
        deploy_conversion(),
        timeout=900,
        parameters={
            "params_path": str(conversion_inputs["params"]),
            "workdir": str(conversion_inputs["workdir"]),
            "input_path": str(conversion_inputs["input"]),
            "experiment": experiment,
        },
    )
    if not flow_run.state.is_completed():
        worker = topology.servers["cpu-worker"].log_tail(8000)
        pytest.fail(f"flow run {flow_run.id} ended {flow_run.state.type}: {flow_run.state.message}\n{worker}")
    return {**conversion_inputs, "flow_run": flow_run, "experiment": experiment}
