"""The scaled topology for real, on 127.0.0.1: Prefect server and MLflow server on Postgres, S3 (moto) for MLflow
artifacts and the DVC remote, a process work pool with a worker. The conversion is deployed to the pool, runs
through the worker on a small slice, and leaves its runs, registered version and artifacts in the shared stores."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_flow_run_completes_through_the_worker_and_is_recorded_in_postgres(topology, conversion):
    flow_run = conversion["flow_run"]
    assert flow_run.work_pool_name == "cpu"
    rows = topology.query("prefect", "SELECT state_type FROM flow_run WHERE id = %s", (str(flow_run.id),))
    assert rows == [("COMPLETED",)]
    assert str(flow_run.id) in topology.servers["cpu-worker"].log_tail(200_000)
    evaluation = json.loads((conversion["workdir"] / "reports/evaluation.json").read_text())
    assert evaluation["clusters"], "no cluster converted on the slice"


def test_s2_and_s3_ran_as_a_subflow_on_dask_in_partitions(topology, conversion):
    rows = topology.query(
        "prefect",
        """
        SELECT child.state_type FROM flow_run child JOIN flow f ON f.id = child.flow_id
        JOIN task_run parent_task ON parent_task.id = child.parent_task_run_id
        WHERE parent_task.flow_run_id = %s AND f.name = 'llm_to_slm S2-S3 on Dask'""",
        (str(conversion["flow_run"].id),),
    )
    assert rows == [("COMPLETED",)]
    audit = json.loads((conversion["workdir"] / "reports/anonymization.json").read_text())
    assert audit["partitions"] == 2
    assert (
        audit["records_out"]
        == audit["records_in"]
        == audit["curation"]["records_in"] - audit["curation"]["records_removed"]
    )


def test_mlflow_runs_and_the_registered_version_live_in_postgres(topology, conversion, mlflow_client):
    experiment = conversion["experiment"]
    steps = topology.query(
        "mlflow",
        """
        SELECT t.value, r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
        JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'llm2slm.step' WHERE e.name = %s""",
        (experiment,),
    )
    assert sorted(steps) == sorted(
        (step, "FINISHED")
        for step in ["conversion", "collect", "anonymize", "discover", "select", "finetune", "evaluate"]
    )
    evaluation = json.loads((conversion["workdir"] / "reports/evaluation.json").read_text())
    for entry in evaluation["clusters"]:
        registered = entry["registered_model"]
        rows = topology.query(
            "mlflow",
            """
            SELECT v.version, v.status, v.source FROM model_versions v JOIN registered_model_aliases a
            ON a.name = v.name AND a.version = v.version WHERE v.name = %s AND a.alias = %s""",
            (registered["name"], registered["alias"]),
        )
        assert [(str(v), status) for v, status, _ in rows] == [(registered["version"], "READY")]
        # The same version through the server's API, by alias.
        version = mlflow_client.get_model_version_by_alias(registered["name"], registered["alias"])
        assert str(version.version) == registered["version"]


def test_artifacts_are_in_the_bucket_not_on_local_disk(topology, conversion, mlflow_client):
    experiment = mlflow_client.get_experiment_by_name(conversion["experiment"])
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    keys = {
        item["Key"]
        for page in topology.s3_client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket="mlflow", Prefix=f"artifacts/{experiment.experiment_id}/")
        for item in page.get("Contents", [])
    }
    names = {Path(key).name for key in keys}
    assert {"anonymization.json", "clusters.json", "evaluation.json"} <= names, sorted(names)[:20]
    assert any("adapter_config.json" in key for key in keys), "no model artifact in the bucket"
    assert not (conversion["workdir"] / "mlartifacts").exists()
    assert not (conversion["workdir"] / "mlflow.db").exists()


def dvc(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_dvc_push_to_the_bucket_and_pull_into_a_clean_clone_restore_the_data(topology, conversion, tmp_path):
    import os

    workdir = conversion["workdir"]
    # Credentials and endpoint reach DVC through the environment only: nothing secret in .dvc/config.
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": topology.native_values()["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": topology.native_values()["AWS_SECRET_ACCESS_KEY"],
        "AWS_ENDPOINT_URL_S3": topology.s3_url,
        "HOME": str(topology.base / "home"),
    }
    git = ["git", "-c", "user.name=integration", "-c", "user.email=integration@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=workdir, check=True)
    dvc(["init", "-q"], workdir, env)
    dvc(["remote", "add", "-d", "store", "s3://dvc/llm2slm"], workdir, env)
    dvc(["remote", "modify", "store", "endpointurl", topology.s3_url], workdir, env)
    dvc(["add", "-q", "data/curated", "models/adapters"], workdir, env)
    subprocess.run(
        [*git, "add", ".dvc", "data/.gitignore", "data/curated.dvc", "models/.gitignore", "models/adapters.dvc"],
        cwd=workdir,
        check=True,
    )
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
