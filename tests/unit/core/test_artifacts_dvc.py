"""dvc.yaml and the artifact catalog agree: each stage's ``${section.field}`` deps are the files its step reads and
its outs (and metrics) the files it writes, so `dvc repro` and `llm2slm run --resume` see the same files stale; and
each catalog path is params.yaml's, for the writing step and for every step that reads it."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from components.core import artifacts
from components.core.artifacts import CATALOG, Artifact
from components.core.config import load_params
from tests.support.imports import ROOT

DVC_STAGES: dict[str, Any] = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = load_params(ROOT / "params.yaml")
PARAM_REF = re.compile(r"^\$\{(\w+)\.(\w+)\}$")
# Inputs a user may name in params.yaml and that are off (null) by default: DVC cannot depend on a null path, so
# dvc.yaml leaves them out; the stage lock of `run --resume` digests them when they are set.
OPTIONAL_USER_INPUTS = {("anonymize", "deny_list_file"), ("select", "ground_truth"), ("select", "catalog")}


def _fields(entries: list[Any], stage: str) -> set[str]:
    """The ``field`` of each ``${stage.field}`` entry (an entry with options is a one-key mapping)."""
    found = set()
    for entry in entries or []:
        name = next(iter(entry)) if isinstance(entry, dict) else entry
        match = PARAM_REF.match(name)
        if match and match.group(1) == stage:
            found.add(match.group(2))
    return found


def disagreements(stages: dict[str, Any], catalog: tuple[Artifact, ...]) -> list[str]:
    """Each difference between dvc.yaml's stages and the catalog, as `stage deps|outs: only in X: [fields]`."""
    found = []
    for stage in ("demo_data", *artifacts.STEPS):
        spec = stages.get(stage, {})
        reads = {a.read_by[stage] for a in catalog if stage in a.read_by} - {
            f for s, f in OPTIONAL_USER_INPUTS if s == stage
        }
        writes = {a.field for a in catalog if a.step == stage}
        sides = {
            "deps": (_fields(spec.get("deps"), stage), reads),
            "outs": (_fields(spec.get("outs"), stage) | _fields(spec.get("metrics"), stage), writes),
        }
        for kind, (in_dvc, in_catalog) in sides.items():
            if in_dvc - in_catalog:
                found.append(f"{stage} {kind}: only in dvc.yaml: {sorted(in_dvc - in_catalog)}")
            if in_catalog - in_dvc:
                found.append(f"{stage} {kind}: only in the catalog: {sorted(in_catalog - in_dvc)}")
    return found


def test_dvc_yaml_deps_and_outs_are_the_catalogs():
    assert disagreements(DVC_STAGES, CATALOG) == []


def test_an_out_removed_from_dvc_yaml_is_found():
    stages = copy.deepcopy(DVC_STAGES)
    stages["select"]["outs"] = [o for o in stages["select"]["outs"] if "${select.predictions}" not in str(o)]
    assert disagreements(stages, CATALOG) == ["select outs: only in the catalog: ['predictions']"]


def test_an_out_removed_from_the_catalog_is_found():
    catalog = tuple(a for a in CATALOG if a is not artifacts.ROUTER_CONFIG)
    assert disagreements(DVC_STAGES, catalog) == ["evaluate outs: only in dvc.yaml: ['router_config']"]


def test_a_dep_removed_from_dvc_yaml_is_found():
    stages = copy.deepcopy(DVC_STAGES)
    stages["evaluate"]["deps"].remove("${evaluate.finetune_summary}")
    assert disagreements(stages, CATALOG) == ["evaluate deps: only in the catalog: ['finetune_summary']"]


@pytest.mark.parametrize("artifact", [a for a in CATALOG if a.step in PARAMS], ids=lambda a: a.name)
def test_catalog_paths_are_params_yamls_for_the_writer_and_every_reader(artifact):
    places = {f"{artifact.step}.{artifact.field}": PARAMS[artifact.step].get(artifact.field)}
    places |= {f"{step}.{field}": PARAMS[step].get(field) for step, field in artifact.read_by.items()}
    assert places == dict.fromkeys(places, artifact.path)


def test_optional_user_inputs_are_catalog_inputs_without_a_default_path():
    optional = {(step, a.read_by[step]) for a in CATALOG if a.path is None for step in a.read_by}
    assert optional == OPTIONAL_USER_INPUTS
