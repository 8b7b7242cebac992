"""The scaled topology for real, on 127.0.0.1: Prefect server and MLflow server on Postgres, S3 (moto) for MLflow
artifacts and the DVC remote, a process work pool with a worker. The conversion is deployed to the pool, runs
through the worker on a small slice, and leaves its runs, registered version and artifacts in the shared stores."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.services import ROOT, Topology

pytestmark = pytest.mark.integration
DEPLOYMENT = "integration"


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
    flow_run = run_deployment(deploy_conversion(), timeout=900, parameters={
        "params_path": str(conversion_inputs["params"]), "workdir": str(conversion_inputs["workdir"]),
        "input_path": str(conversion_inputs["input"]), "experiment": experiment})
    if not flow_run.state.is_completed():
        worker = topology.servers["cpu-worker"].log_tail(8000)
        pytest.fail(f"flow run {flow_run.id} ended {flow_run.state.type}: {flow_run.state.message}\n{worker}")
    return {**conversion_inputs, "flow_run": flow_run, "experiment": experiment}


def query(topology: Topology, database: str, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(topology.db_url(database)) as connection, connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchall()


def test_the_flow_run_completes_through_the_worker_and_is_recorded_in_postgres(topology, conversion):
    flow_run = conversion["flow_run"]
    assert flow_run.work_pool_name == "cpu"
    rows = query(topology, "prefect", "SELECT state_type FROM flow_run WHERE id = %s", (str(flow_run.id),))
    assert rows == [("COMPLETED",)]
    assert str(flow_run.id) in topology.servers["cpu-worker"].log_tail(200_000)
    evaluation = json.loads((conversion["workdir"] / "reports/evaluation.json").read_text())
    assert evaluation["clusters"], "no cluster converted on the slice"


def test_mlflow_runs_and_the_registered_version_live_in_postgres(topology, conversion, mlflow_client):
    experiment = conversion["experiment"]
    steps = query(topology, "mlflow", """
        SELECT t.value, r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
        JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'llm2slm.step' WHERE e.name = %s""", (experiment,))
    assert sorted(steps) == sorted((step, "FINISHED") for step in
                                   ["conversion", "collect", "anonymize", "discover", "select", "finetune",
                                    "evaluate"])
    evaluation = json.loads((conversion["workdir"] / "reports/evaluation.json").read_text())
    for entry in evaluation["clusters"]:
        registered = entry["registered_model"]
        rows = query(topology, "mlflow", """
            SELECT v.version, v.status, v.source FROM model_versions v JOIN registered_model_aliases a
            ON a.name = v.name AND a.version = v.version WHERE v.name = %s AND a.alias = %s""",
                     (registered["name"], registered["alias"]))
        assert [(str(v), status) for v, status, _ in rows] == [(registered["version"], "READY")]
        # The same version through the server's API, by alias.
        version = mlflow_client.get_model_version_by_alias(registered["name"], registered["alias"])
        assert str(version.version) == registered["version"]


def test_artifacts_are_in_the_bucket_not_on_local_disk(topology, conversion, mlflow_client):
    experiment = mlflow_client.get_experiment_by_name(conversion["experiment"])
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    keys = {item["Key"] for page in topology.s3_client().get_paginator("list_objects_v2").paginate(
        Bucket="mlflow", Prefix=f"artifacts/{experiment.experiment_id}/") for item in page.get("Contents", [])}
    names = {Path(key).name for key in keys}
    assert {"anonymization.json", "clusters.json", "evaluation.json"} <= names, sorted(names)[:20]
    assert any("adapter_config.json" in key for key in keys), "no model artifact in the bucket"
    assert not (conversion["workdir"] / "mlartifacts").exists()
    assert not (conversion["workdir"] / "mlflow.db").exists()


def dvc(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dvc_push_to_the_bucket_and_pull_into_a_clean_clone_restore_the_data(topology, conversion, tmp_path):
    import os

    workdir = conversion["workdir"]
    # Credentials and endpoint reach DVC through the environment only: nothing secret in .dvc/config.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": topology.native_values()["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": topology.native_values()["AWS_SECRET_ACCESS_KEY"],
           "AWS_ENDPOINT_URL_S3": topology.s3_url, "HOME": str(topology.base / "home")}
    git = ["git", "-c", "user.name=integration", "-c", "user.email=integration@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=workdir, check=True)
    dvc(["init", "-q"], workdir, env)
    dvc(["remote", "add", "-d", "store", "s3://dvc/llm2slm"], workdir, env)
    dvc(["remote", "modify", "store", "endpointurl", topology.s3_url], workdir, env)
    dvc(["add", "-q", "data/curated", "models/adapters"], workdir, env)
    subprocess.run([*git, "add", ".dvc", "data/.gitignore", "data/curated.dvc", "models/.gitignore",
                    "models/adapters.dvc"], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-qm", "data"], cwd=workdir, check=True)
    dvc(["push"], workdir, env)
    assert "secret" not in (workdir / ".dvc/config").read_text().lower()
    pushed = topology.s3_client().list_objects_v2(Bucket="dvc", Prefix="llm2slm/")
    assert pushed["KeyCount"] > 0

    clone = tmp_path / "clone"
    subprocess.run([*git, "clone", "-q", str(workdir), str(clone)], check=True)
    assert not (clone / "data/curated").exists()
    dvc(["pull"], clone, env)
    for folder in ["data/curated", "models/adapters"]:
        assert digests(clone / folder) == digests(workdir / folder) != {}
