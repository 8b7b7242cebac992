"""DVC: the stages run the CLI with paths from params.yaml, and a second `dvc repro` runs nothing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A throwaway copy of the pipeline definition in its own git + DVC repo."""
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("dvc.yaml", "params.yaml", "components", "tasks", "flows"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / name)
    run(["git", "init", "-q"], copy)
    run([sys.executable, "-m", "dvc", "init", "-q"], copy)
    return copy


def test_second_repro_of_unchanged_stages_runs_nothing(project: Path):
    first = run([sys.executable, "-m", "dvc", "repro", "collect"], project)
    assert "Running stage 'demo_data'" in first and "Running stage 'collect'" in first
    assert (project / "data/quarantine.jsonl").exists() and (project / "data/collected/records.parquet").exists()
    assert (project / "dvc.lock").exists()

    second = run([sys.executable, "-m", "dvc", "repro", "collect"], project)
    assert "Running stage" not in second

    # A param that the collect stage lists makes it (and only it) run again.
    params = (project / "params.yaml").read_text().replace("default_agent: default", "default_agent: other")
    (project / "params.yaml").write_text(params)
    third = run([sys.executable, "-m", "dvc", "repro", "collect"], project)
    assert "Running stage 'collect'" in third and "Running stage 'demo_data'" not in third
