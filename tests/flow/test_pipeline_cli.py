"""The whole dvc.yaml reproduced on a tiny input, then the step subcommands run through typer on its work dir.

One module-scoped fixture copies the pipeline into a throwaway git + DVC repo and runs `dvc repro`: every stage,
each its `llm2slm <step>` subprocess, on 20 demo conversations, with the tiny random-weight llama of
tests/support/tiny_models.py as the only S4 candidate and two S5 steps. Real here: S1-S6 as DVC runs them
(Presidio, MiniLM embeddings, UMAP + HDBSCAN, grammar-constrained generation, LoRA training, the MLflow registry).
The CLI test reuses a copy of that work dir, so nothing is built twice that a step does not rebuild itself."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from components.core.schema import read_records
from tests.support.tiny_models import build_tiny_model, write_tiny_catalog

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["demo_data", "collect", "anonymize", "discover", "select", "finetune", "evaluate"]
GATED = "tiny-gated"  # the tiny model again, under a licence params.yaml does not allow
GATED_LICENCE = "Test-Gated-Licence"
PSEUDONYM_KEY = "pipeline-cli-test-pseudonym-key"


def small_params(catalog: str) -> dict:
    """The real params, shrunk: 20 demo conversations (~190 calls, one cluster to convert), the tiny model, two
    LoRA steps, short answers, no time budgets (a slow shared machine must not leave a cluster out)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo_data"].update(kind="agent", conversations=20, malformed_lines=2)
    params["discover"].update(
        min_cluster_size_to_convert=8,
        max_clusters_to_convert=1,
        max_test_per_cluster=4,
        hdbscan={"min_cluster_size": 8, "min_samples": 3},
    )
    params["select"].update(candidates=["tiny"], catalog=catalog, time_budget_minutes=None, max_new_tokens=32)
    params["finetune"].update(max_steps=2, per_device_train_batch_size=2, time_budget_minutes=None, torch_threads=1)
    params["evaluate"].update(max_new_tokens=32)
    params["refresh"]["max_fresh_test_per_cluster"] = 4
    return params


def create_experiment(tracking_uri: str, name: str, artifacts: Path) -> None:
    """An experiment whose artifacts go to `artifacts`: on a non-embedded store MLflow would pick ./mlruns."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=artifacts.resolve().as_uri())


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def dvc(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], project, env)


def dvc_status(project: Path, env: dict[str, str]) -> dict:
    return json.loads(dvc(project, env, "status", "--json").stdout)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """`dvc repro` of the whole dvc.yaml in a throwaway copy of the project; returns what the tests need."""
    base = tmp_path_factory.mktemp("pipeline")
    tiny = build_tiny_model(base / "tiny")
    catalog = Path(write_tiny_catalog(base / "catalog.yaml", tiny))
    models = yaml.safe_load(catalog.read_text())["models"]
    catalog.write_text(yaml.safe_dump({"models": [*models, {**models[0], "name": GATED, "licence": GATED_LICENCE}]}))

    project = base / "project"
    project.mkdir()
    for name in ("dvc.yaml", "components", "tasks", "flows"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, project / name)
    (project / "params.yaml").write_text(yaml.safe_dump(small_params(str(catalog))))
    tracking_uri = f"sqlite:///{base / 'mlflow.db'}"
    create_experiment(tracking_uri, "llm2slm", base / "mlartifacts")
    env = {
        **os.environ,
        # `llm2slm` is the venv's console script; PYTHONPATH makes it run the copy's code, not the editable install's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(project),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREFECT_HOME": str(base / "prefect-home"),
        "LLM2SLM_PSEUDONYM_KEY": PSEUDONYM_KEY,
    }
    run(["git", "init", "-q"], project, env)
    dvc(project, env, "init", "-q")
    first = dvc(project, env, "repro")
    return {
        "base": base,
        "project": project,
        "env": env,
        "output": first.stdout + first.stderr,
        "tracking_uri": tracking_uri,
    }


def test_dvc_repro_runs_every_stage_writes_the_workdir_contract_and_then_nothing(reproduced):
    project, env, output = reproduced["project"], reproduced["env"], reproduced["output"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output and f"> llm2slm {stage.replace('_', '-')}" in output, stage
    assert sorted(yaml.safe_load((project / "dvc.lock").read_text())["stages"]) == sorted(STAGES)

    # S1/S2: collected and curated records, the audit counts what was written
    collected = read_records(project / "data/collected/records.parquet")
    curated = read_records(project / "data/curated/records.parquet")
    audit = json.loads((project / "reports/anonymization.json").read_text())
    assert 0 < len(curated) == audit["records_out"] <= len(collected)
    assert audit["records_with_pii"] > 0 and (project / "data/quarantine.jsonl").read_text().strip()
    # S3: clusters, at least one to convert, with held-out calls in the splits
    clusters = json.loads((project / "data/clusters/clusters.json").read_text())
    converted = [c["cluster_id"] for c in clusters if c["convert"]]
    assert converted and (project / "data/splits/splits.parquet").is_file()
    # S4: the leaderboard benchmarked the tiny model on the converted cluster and chose it
    leaderboard = json.loads((project / "reports/leaderboard.json").read_text())
    assert [(c["name"], c["status"]) for c in leaderboard["candidates"]] == [("tiny", "benchmarked")]
    assert [(c["cluster_id"], c["selected"]) for c in leaderboard["clusters"]] == [(cid, "tiny") for cid in converted]
    # S5: a LoRA adapter per converted cluster, two steps each
    finetune = json.loads((project / "reports/finetune.json").read_text())["clusters"]
    assert [(c["cluster_id"], c["steps"]) for c in finetune] == [(cid, 2) for cid in converted]
    for cid in converted:
        assert (project / f"models/adapters/cluster_{cid}/adapter_model.safetensors").is_file()
    # S6: the converted cluster evaluated (LLM vs base vs fine-tuned), registered, routed
    evaluation = json.loads((project / "reports/evaluation.json").read_text())
    assert [e["cluster_id"] for e in evaluation["clusters"]] == converted
    for entry in evaluation["clusters"]:
        assert entry["n_test"] > 0 and set(entry["scores"]) == {"llm", "slm_base", "slm_finetuned"}
        assert entry["registered_model"]["alias"] == ("champion" if entry["promoted"] else "challenger")
    router = yaml.safe_load((project / "reports/router.yaml").read_text())
    assert sorted(int(c) for c in router["clusters"]) == converted
    assert (project / "reports/report.html").is_file()

    second = dvc(project, env, "repro")
    assert "Running stage" not in second.stdout + second.stderr
    assert dvc_status(project, env) == {}


def test_editing_the_grammar_module_makes_select_and_evaluate_stale(reproduced):
    """The issue's "done when": the grammar that decodes every S4/S6 answer is a dep of both stages (and of S5,
    which lists the whole components/slm package); a comment-only edit changes the file's hash."""
    project, env = reproduced["project"], reproduced["env"]
    grammar = project / "components/slm/grammar.py"
    original = grammar.read_text()
    edited = original.replace("# The separators of", "# The (edited) separators of", 1)
    assert edited != original and edited.count("\n") == original.count("\n")
    grammar.write_text(edited)
    try:
        changed = dvc_status(project, env)
    finally:
        grammar.write_text(original)
    assert {"select", "evaluate"} <= set(changed)
    assert set(changed) == {"select", "finetune", "evaluate"}, changed
    assert all("components/slm" in json.dumps(changed[stage]) for stage in changed)
    assert dvc_status(project, env) == {}  # the same bytes again: up to date


def invoke(*args: str) -> str:
    from flows.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{args}\n{result.output}\n{result.exception!r}"
    return result.output


def leaderboard_candidates(workdir: Path) -> dict[str, dict]:
    board = json.loads((workdir / "reports/leaderboard.json").read_text())
    return {c["name"]: c for c in board["candidates"]} | {
        f"{r['candidate']}@{c['cluster_id']}": r for c in board["clusters"] for r in c["results"]
    }


def step_runs(tracking_uri: str, experiment: str) -> list[str]:
    import mlflow

    runs = mlflow.MlflowClient(tracking_uri).search_runs(
        [mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment).experiment_id]
    )
    return sorted(r.data.tags.get("llm2slm.step", "") for r in runs)


def test_step_subcommands_select_options_run_resume_and_refresh_on_the_reproduced_workdir(
    reproduced, tmp_path, monkeypatch
):
    import prefect.settings as settings
    from prefect.testing.utilities import prefect_test_harness

    from components.collect.demo_data import DemoDataConfig, build_demo_calls

    # A copy of the reproduced project: the DVC tests keep theirs unchanged.
    work = tmp_path / "work"
    shutil.copytree(reproduced["project"], work)
    params = str(work / "params.yaml")
    for name in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "MLFLOW_TRACKING_URI", "LLM2SLM_PSEUDONYM_KEY"):
        monkeypatch.setenv(name, reproduced["env"][name])
    experiment = f"cli-{uuid.uuid4().hex[:8]}"
    create_experiment(reproduced["tracking_uri"], experiment, tmp_path / "mlartifacts")
    common = ["--workdir", str(work), "--params", params, "--experiment", experiment]

    # S2 and S3 again, in-process: the same curated calls (same pseudonym key) and the same clusters as DVC's.
    dvc_curated = read_records(work / "data/curated/records.parquet")
    dvc_clusters = json.loads((work / "data/clusters/clusters.json").read_text())
    (work / "data/curated/records.parquet").unlink()
    invoke("anonymize", *common)
    assert read_records(work / "data/curated/records.parquet") == dvc_curated
    (work / "data/clusters/clusters.json").unlink()
    invoke("discover", *common)

    def shape(clusters):
        return [(c["cluster_id"], c["size"], c["convert"]) for c in clusters]

    assert shape(json.loads((work / "data/clusters/clusters.json").read_text())) == shape(dvc_clusters)

    # S4: a candidate named on the command line is looked at; its licence is refused until it is allowed.
    invoke("select", *common, "--candidate", GATED)
    refused = leaderboard_candidates(work)
    assert refused[GATED]["status"] == "skipped" and GATED_LICENCE in refused[GATED]["reason"]
    assert refused["tiny"]["status"] == "benchmarked"
    invoke("select", *common, "--candidate", GATED, "--allow-licence", GATED_LICENCE)
    allowed = leaderboard_candidates(work)
    assert allowed[GATED]["status"] == "benchmarked" and allowed["tiny"]["status"] == "benchmarked"
    converted = [c["cluster_id"] for c in dvc_clusters if c["convert"]]
    assert all(f"{GATED}@{cid}" in allowed and f"tiny@{cid}" in allowed for cid in converted)

    # S5 and S6 on the new leaderboard.
    (work / "reports/finetune.json").unlink()
    invoke("finetune", *common)
    trained = json.loads((work / "reports/finetune.json").read_text())["clusters"]
    assert [(c["cluster_id"], c["steps"], Path(c["adapter_dir"]).parent) for c in trained] == [
        (cid, 2, work / "models/adapters") for cid in converted
    ]
    (work / "reports/evaluation.json").unlink()
    invoke("evaluate", *common)
    evaluation = json.loads((work / "reports/evaluation.json").read_text())
    assert [e["cluster_id"] for e in evaluation["clusters"]] == converted
    # --experiment: each step subcommand logged its run there
    assert step_runs(reproduced["tracking_uri"], experiment) == sorted(
        ["anonymize", "discover", "select", "select", "finetune", "evaluate"]
    )

    batch = tmp_path / "batch.jsonl"
    demo = yaml.safe_load(Path(params).read_text())["demo_data"]
    batch.write_text("\n".join(build_demo_calls(DemoDataConfig(**{**demo, "conversations": 4, "seed": 7}))) + "\n")
    prefect_home = tmp_path / "prefect-home"
    with (
        prefect_test_harness(server_startup_timeout=180),
        settings.temporary_settings(
            updates={settings.PREFECT_HOME: prefect_home, settings.PREFECT_LOCAL_STORAGE_PATH: prefect_home / "storage"}
        ),
    ):
        # The whole flow once (it records a stage lock per step), then --resume: every step is up to date.
        first = invoke("run", *common)
        assert "Up to date, skipped" not in first and "Report:" in first
        evaluated = (work / "reports/evaluation.json").read_bytes()
        resumed = invoke("run", *common, "--resume")
        assert "Up to date, skipped: collect, anonymize, discover, select, finetune, evaluate" in resumed
        assert (work / "reports/evaluation.json").read_bytes() == evaluated

        # S6 flywheel on the same work dir: its history starts from the conversion's curated calls.
        curated = {r.record_id for r in read_records(work / "data/curated/records.parquet")}
        refreshed = invoke("refresh", "--input", str(batch), *common)
    history = {r.record_id for r in read_records(work / "data/refresh/records.parquet")}
    new = len(history - curated)
    assert curated < history and f"Refresh 1: {new} new calls" in refreshed
    report = json.loads((work / "reports/refresh.json").read_text())
    assert report["refresh"] == 1 and report["batch_records"] == new
    assert "Refresh report:" in refreshed
