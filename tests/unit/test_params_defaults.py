"""params.yaml is the one place of every default: where a config class carries a default for a key that
params.yaml also sets, the two agree (or the class carries none), so code that builds a config without
params.yaml (a test, a notebook, the library) runs with the values the pipeline runs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from components.collect.demo_data import DemoDataConfig
from components.core.config import load_params, load_section
from components.evaluate.promotion import PromotionPolicy
from components.evaluate.refresh import RefreshConfig
from flows.steps import STEP_CONFIGS
from tasks.helpers.parallel import ExecutionConfig
from tasks.helpers.tracking import TrackingConfig

ROOT = Path(__file__).resolve().parents[2]
SECTION_CLASSES: dict[str, type[BaseModel]] = {
    **STEP_CONFIGS,
    "demo_data": DemoDataConfig,
    "refresh": RefreshConfig,
    "promotion": PromotionPolicy,
    "tracking": TrackingConfig,
    "execution": ExecutionConfig,
}


def disagreements(cls: type[BaseModel], section: dict[str, Any], validated: BaseModel, where: str) -> list[str]:
    """``where.key: class default != params value`` for each key of ``section`` whose class default differs from
    the value params.yaml sets (as validated); a nested settings class is compared key by key, so only the keys
    params.yaml sets count there too."""
    found = []
    for key, value in section.items():
        field = cls.model_fields[key]
        default = field.get_default(call_default_factory=True)
        if default is PydanticUndefined:
            continue  # no default: params.yaml alone says
        configured = getattr(validated, key)
        if isinstance(default, BaseModel) and isinstance(value, dict):
            found += disagreements(type(default), value, configured, f"{where}.{key}")
        elif default != configured:
            found.append(f"{where}.{key}: class default {default!r} != params.yaml {configured!r}")
    return found


def test_every_section_of_params_yaml_has_its_config_class_here():
    assert set(load_params(ROOT / "params.yaml")) == set(SECTION_CLASSES)


@pytest.mark.parametrize("section", sorted(SECTION_CLASSES))
def test_config_class_defaults_agree_with_params_yaml(section):
    params = load_params(ROOT / "params.yaml")
    cls = SECTION_CLASSES[section]
    assert disagreements(cls, params[section] or {}, load_section(params, section, cls), section) == []


def test_a_default_that_drifts_from_params_yaml_is_reported():
    class Inner(BaseModel):
        rate: float = 0.5
        name: str = "kept"

    class Outer(BaseModel):
        steps: int = 24
        required: int
        inner: Inner = Inner()

    section = {"steps": 60, "required": 3, "inner": {"rate": 0.25, "name": "kept"}}
    assert disagreements(Outer, section, Outer.model_validate(section), "s") == [
        "s.steps: class default 24 != params.yaml 60",
        "s.inner.rate: class default 0.5 != params.yaml 0.25",
    ]
