"""Loading params.yaml into one frozen, typed config object per step.

Each step's config class lives beside its logic (``components/<step>.py``) and derives from :class:`StepConfig`;
this module only reads the file and hands each step its own section. Paths in a section are relative to the
work directory unless absolute, so the same params serve ``dvc repro`` (work dir = repo root) and
``llm2slm run --workdir DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

DEFAULT_PARAMS = Path("params.yaml")


class StepConfig(BaseModel):
    """Base of every step's config: immutable, and unknown keys are an error (a typo must not pass silently)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


ConfigT = TypeVar("ConfigT", bound=StepConfig)


def load_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"params file not found: {path}")
    with path.open() as handle:
        params = yaml.safe_load(handle) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of step sections")
    return params


def load_section(params: dict[str, Any], section: str, config_class: type[ConfigT]) -> ConfigT:
    """Validate one section of params.yaml into its config class; a missing section is a clear error."""
    if section not in params:
        raise KeyError(f"params.yaml has no '{section}' section")
    return config_class.model_validate(params[section] or {})


def resolve(workdir: Path, path: str | Path) -> Path:
    """A path from params, anchored at the work directory unless it is absolute."""
    path = Path(path)
    return path if path.is_absolute() else workdir / path
