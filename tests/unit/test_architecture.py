"""Contracts of the layout: components stay framework-free, params.yaml validates, paths are written once."""

import ast
import re
from pathlib import Path

import yaml

from components.core.config import load_params, load_section
from flows.steps import STEP_CONFIGS, load_pipeline_config

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = {"prefect", "mlflow"}


def imported_top_level_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def test_components_import_no_orchestration_or_tracking_framework():
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_top_level_modules(p) & FRAMEWORKS)
        for p in (ROOT / "components").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_step_section_of_params_validates():
    config = load_pipeline_config(ROOT / "params.yaml")
    assert set(config.steps) == set(STEP_CONFIGS)


def test_unknown_key_in_a_section_is_an_error():
    params = load_params(ROOT / "params.yaml")
    params["collect"] = {**params["collect"], "ouptut": "typo.parquet"}
    try:
        load_section(params, "collect", STEP_CONFIGS["collect"])
    except ValueError as error:
        assert "ouptut" in str(error)
    else:
        raise AssertionError("a misspelt key was accepted")


def test_dvc_stages_take_paths_from_params_and_call_the_cli():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = load_params(ROOT / "params.yaml")
    for name, stage in dvc["stages"].items():
        assert stage["cmd"].startswith("llm2slm "), name
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            assert re.fullmatch(r"\$\{[a-z_]+\.[a-z_]+\}", path), f"{name}: {path} is hard-coded"
            section, key = path[2:-1].split(".")
            assert section == name and key in params[section], path
        for param in stage.get("params", []):
            section, key = param.split(".", 1)
            assert key.split(".")[0] in params[section], param


def test_fixed_output_names_of_the_workdir_contract():
    params = load_params(ROOT / "params.yaml")
    assert params["collect"]["quarantine"] == "data/quarantine.jsonl"
    assert params["evaluate"]["evaluation"] == "reports/evaluation.json"


def test_markers_are_strict_and_every_tier_has_one():
    import tomllib

    from tests.conftest import TIERS

    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in pytest_options["addopts"]  # a misspelt marker is an error, not a silent no-op
    declared = {marker.split(":")[0] for marker in pytest_options["markers"]}
    assert declared == set(TIERS)
