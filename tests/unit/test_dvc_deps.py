"""dvc.yaml cannot go stale: every project module a stage's command can import is covered by the stage's deps."""

from pathlib import Path

import pytest
import yaml

from tests.support.imports import ROOT, closure

# The module each stage's `llm2slm` subcommand runs (the CLI itself only dispatches to it).
COMMAND_MODULES = {"demo_data": "components.collect.demo_data"}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_every_module_its_command_imports(stage):
    module = COMMAND_MODULES.get(stage, f"tasks.{stage}")
    needed = closure(module)
    assert any(p.name != "__init__.py" for p in needed), f"{module} was not found"
    missing = sorted(str(p.relative_to(ROOT)) for p in needed if not covered(p, STAGES[stage]["deps"]))
    assert missing == [], f"{stage}: add these to its deps in dvc.yaml"


def test_the_closure_follows_imports_inside_functions():
    # generation imports the grammar lazily (inside generate): a top-level-only scan would miss it.
    assert ROOT / "components/slm/grammar.py" in closure("components.slm.generation")


def test_every_code_dep_exists():
    for name, stage in STAGES.items():
        for dep in stage["deps"]:
            if dep.startswith(("components", "tasks")):
                assert (ROOT / dep).exists(), f"{name}: {dep}"
