"""The CLI commands that no step test runs: `catalog`, `show-params`, `fetch-assets` (on the cached assets), and a
wrong `--with` asset named in one line. Each runs through typer as a user would."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from components.core.assets import ASSETS
from components.slm.catalog import load_catalog
from flows.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_catalog_lists_every_candidate_with_its_size_and_licence():
    result = CliRunner().invoke(app, ["catalog"])
    assert result.exit_code == 0, result.output
    models = load_catalog().models
    lines = result.output.splitlines()
    assert len(lines) == len(models)
    for model, line in zip(models, lines):
        assert line.startswith(model.name) and model.licence in line and line.endswith(model.ref)
        assert f"{model.parameters_m:g}M" in line and f" {model.context_length} " in line


def test_show_params_prints_the_validated_config_of_every_step(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["finetune"]["max_steps"] = 7
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["show-params", "--params", str(path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert {"collect", "anonymize", "discover", "select", "finetune", "evaluate"} <= set(shown)
    assert shown["finetune"]["max_steps"] == 7  # the file given, not the repository's params.yaml
    params["finetune"]["max_steps"] = "seven"
    path.write_text(yaml.safe_dump(params))
    assert CliRunner().invoke(app, ["show-params", "--params", str(path)]).exit_code != 0


def test_fetch_assets_names_each_cached_asset_and_refuses_an_unknown_one():
    result = CliRunner().invoke(app, ["fetch-assets"])
    assert result.exit_code == 0, result.output
    printed = dict(line.split(": ", 1) for line in result.output.splitlines())
    assert set(printed) == set(ASSETS)
    assert all(Path(path).exists() for path in printed.values())
    unknown = CliRunner().invoke(app, ["fetch-assets", "--with", "no-such-model"])
    assert unknown.exit_code != 0 and "no-such-model" in repr(unknown.exception)
