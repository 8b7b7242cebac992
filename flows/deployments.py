"""Deployments from prefect.yaml, built in Python so `llm2slm serve-deployments` serves exactly what `prefect
deploy` would register: same names, entrypoints, parameters and cron schedules (the file is the one source)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_spec(path: Path) -> list[dict[str, Any]]:
    """The `deployments` list of a prefect.yaml."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    deployments = spec.get("deployments")
    if not isinstance(deployments, list) or not deployments:
        raise ValueError(f"{path} declares no deployments")
    return deployments


def flow_of(entrypoint: str) -> Any:
    """The flow object an entrypoint `path/to/file.py:function` names (relative to the repository root)."""
    file_part, _, function = entrypoint.partition(":")
    module = ".".join(Path(file_part).with_suffix("").parts)
    return getattr(importlib.import_module(module), function)


def build_deployments(spec_path: Path, params_path: Path, workdir: Path) -> list[Any]:
    """RunnerDeployments for `prefect.serve`; `params_path` and `workdir` replace the file's relative ones."""
    from prefect.schedules import Cron

    deployments = []
    for entry in load_spec(spec_path):
        parameters = {**(entry.get("parameters") or {}), "params_path": str(params_path), "workdir": str(workdir)}
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
            for s in entry.get("schedules") or []
        ]
        deployments.append(
            flow_of(entry["entrypoint"]).to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                tags=entry.get("tags"),
                parameters=parameters,
                schedules=schedules or None,
            )
        )
    return deployments
