"""The native topology, started once for the integration tests and stopped by PID at the end, also on failure."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from components.config import load_params
from tests.integration.services import ROOT, Topology, start_topology


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
    """The real params shrunk to a small slice: few records, one cluster, a tiny model, two LoRA steps."""
    params = load_params(ROOT / "params.yaml")
    params["demo_data"].update(max_records=90, malformed_lines=2, pii_share=0.3)
    params["discover"].update(min_cluster_size_to_convert=8, max_clusters_to_convert=1, max_test_per_cluster=3,
                              hdbscan={"min_cluster_size": 8, "min_samples": 3})
    params["select"].update(candidates=[{"ref": model_dir, "name": "tiny-llama", "licence": "Apache-2.0",
                                         "parameters_m": 1}], max_new_tokens=8)
    params["finetune"].update(max_steps=2, max_length=256)
    params["evaluate"].update(max_new_tokens=8)
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def conversion_inputs(topology: Topology):
    """A work directory with the small params, the demo log and a tiny random-weight model."""
    from components.demo_data import DemoDataConfig, build_demo_calls
    from tests.unit.tiny_models import build_tiny_model

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

    with temporary_settings({PREFECT_API_URL: topology.prefect_api_url,
                             PREFECT_HOME: str(topology.base / "prefect-home")}):
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
