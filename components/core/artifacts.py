"""The artifact catalog: every file a step writes, named once, with its path relative to the work dir, the field of
each step's config that places it (params.yaml may relocate it), and, for the S4 → S6 JSON files, the typed model
it is read and written with.

``flows/steps.py`` derives each step's inputs and outputs (the stage locks of ``llm2slm run --resume``) from this
table, and tests/unit/core/test_artifacts_dvc.py holds dvc.yaml's deps and outs to it, so `run --resume` and
`dvc repro` agree on what is stale. Tasks read and write the typed files through :func:`read` and :func:`write`:
a file that does not fit its model (written by an older release, or edited by hand) fails with
:class:`StaleArtifactError`, which names the step to re-run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from components.core.config import resolve
from components.core.step_files import Evaluation, FinetuneSummary, Leaderboard, StepFile

# The conversion's steps, S1 to S6 (``demo_data`` writes the demo log S1 reads; ``refresh`` runs after S6).
STEPS = ("collect", "anonymize", "discover", "select", "finetune", "evaluate")
Model = TypeVar("Model", bound=StepFile)


@dataclass(frozen=True)
class Artifact:
    """One file (or folder) a step writes. ``field``: the producing step's config field that places it;
    ``read_by``: step -> the field of that step's config that names the same file; ``model``: the typed content
    of a JSON file. ``step`` None: a user-supplied input (off unless params.yaml names one), not a step output."""

    name: str
    path: str | None
    step: str | None
    field: str
    read_by: dict[str, str] = field(default_factory=dict)
    model: type[StepFile] | None = None


class StaleArtifactError(ValueError):
    """A step's file is missing or does not fit what the step writes now: the message names the step to re-run."""


def _artifact(name: str, path: str | None, step: str | None, field_name: str, **read_by: str) -> Artifact:
    return Artifact(name, path, step, field_name, dict(read_by))


RAW_CALLS = _artifact("raw calls", "data/raw/calls.jsonl", "demo_data", "output", collect="input")
KNOWN_GROUPS = _artifact("demo calls' BFCL items", "data/raw/known_groups.jsonl", "demo_data", "known_groups")
COLLECTED = _artifact(
    "collected records", "data/collected/records.parquet", "collect", "output", anonymize="input", evaluate="collected"
)
COLLECT_STATE = _artifact("collect watermarks", "data/collected/state.json", "collect", "state")
QUARANTINE = _artifact("quarantined lines", "data/quarantine.jsonl", "collect", "quarantine")
COLLECT_SUMMARY = _artifact("collect summary", "reports/collect.json", "collect", "summary")
DENY_LIST = _artifact("deny list", None, None, "deny_list_file", anonymize="deny_list_file")
CURATED = _artifact(
    "curated records",
    "data/curated/records.parquet",
    "anonymize",
    "output",
    discover="input",
    select="curated",
    finetune="curated",
    evaluate="curated",
)
ANONYMIZATION_AUDIT = _artifact("anonymization audit", "reports/anonymization.json", "anonymize", "audit")
ANONYMIZATION_AUDIT_HTML = _artifact(
    "anonymization audit page", "reports/anonymization.html", "anonymize", "audit_html"
)
ASSIGNMENTS = _artifact(
    "cluster assignments", "data/clusters/assignments.parquet", "discover", "assignments", evaluate="assignments"
)
CLUSTERS = _artifact("cluster table", "data/clusters/clusters.json", "discover", "clusters", select="clusters")
SPLITS = _artifact(
    "train/test splits",
    "data/splits/splits.parquet",
    "discover",
    "splits",
    select="splits",
    finetune="splits",
    evaluate="splits",
)
CLUSTER_MODEL = _artifact("cluster model", "data/clusters/model", "discover", "model_dir")
CLUSTER_REPORT = _artifact("cluster report", "reports/clusters.html", "discover", "report")
CLUSTER_MAP = _artifact("cluster map", "reports/clusters_map.png", "discover", "cluster_map")
GROUND_TRUTH = _artifact("ground-truth labels", None, None, "ground_truth", select="ground_truth")
MODEL_CATALOG = _artifact("SLM catalog", None, None, "catalog", select="catalog")
LEADERBOARD = Artifact(
    "leaderboard",
    "reports/leaderboard.json",
    "select",
    "leaderboard",
    {"finetune": "leaderboard", "evaluate": "leaderboard"},
    Leaderboard,
)
LEADERBOARD_TABLE = _artifact("leaderboard table", "reports/leaderboard.csv", "select", "leaderboard_table")
SELECT_METRICS = _artifact("select metrics", "reports/select_metrics.json", "select", "metrics")
BASE_PREDICTIONS = _artifact(
    "base model answers",
    "data/predictions/slm_base.parquet",
    "select",
    "predictions",
    evaluate="base_predictions",
)
CANDIDATE_PREDICTIONS = _artifact(
    "candidate answers", "data/predictions/slm_candidates.parquet", "select", "candidate_predictions"
)
ADAPTERS = _artifact("adapters", "models/adapters", "finetune", "output_dir", evaluate="adapters")
TRAINING_SETS = _artifact("training sets", "data/training", "finetune", "training_sets")
FINETUNE_SUMMARY = Artifact(
    "fine-tune summary",
    "reports/finetune.json",
    "finetune",
    "summary",
    {"evaluate": "finetune_summary"},
    FinetuneSummary,
)
EVALUATION = Artifact("evaluation", "reports/evaluation.json", "evaluate", "evaluation", {}, Evaluation)
EVALUATE_METRICS = _artifact("evaluation metrics", "reports/metrics.json", "evaluate", "metrics")
EVALUATE_REPORT = _artifact("evaluation report", "reports/report.html", "evaluate", "report")
TUNED_PREDICTIONS = _artifact("fine-tuned answers", "data/predictions/slm_finetuned.parquet", "evaluate", "predictions")
ROUTER_CONFIG = _artifact("router config", "reports/router.yaml", "evaluate", "router_config")
REFRESH_STATE = _artifact("refresh state", "data/refresh/state.json", "refresh", "state")

CATALOG: tuple[Artifact, ...] = tuple(value for value in dict(globals()).values() if isinstance(value, Artifact))


def step_files(step: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the config fields of what ``step`` reads, those of what it writes), in catalog order."""
    inputs = tuple(a.read_by[step] for a in CATALOG if step in a.read_by)
    outputs = tuple(a.field for a in CATALOG if a.step == step)
    return inputs, outputs


def path_of(artifact: Artifact, workdir: Path, where: str | None = None) -> Path:
    """The artifact's path in ``workdir``: ``where`` (the step config's field, when params.yaml relocates it), else
    the catalog's."""
    relative = where or artifact.path
    if relative is None:
        raise ValueError(f"the {artifact.name} has no default path: params.yaml must name one")
    return resolve(workdir, relative)


def _rerun_hint(artifact: Artifact) -> str:
    return f"re-run `llm2slm {artifact.step}` (or `llm2slm run`) to write it again"


def read(artifact: Artifact, workdir: Path, where: str | None = None) -> StepFile:
    """The typed content of a step's JSON file; a missing or unreadable one raises :class:`StaleArtifactError`."""
    if artifact.model is None:
        raise TypeError(f"the {artifact.name} has no typed reader")
    path = path_of(artifact, workdir, where)
    if not path.exists():
        raise StaleArtifactError(f"{path} (the {artifact.name}) is missing: {_rerun_hint(artifact)}")
    try:
        return artifact.model.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise StaleArtifactError(
            f"{path} (the {artifact.name}) is not JSON ({error}): {_rerun_hint(artifact)}"
        ) from error
    except ValidationError as error:
        problem = error.errors()[0]
        first = f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
        raise StaleArtifactError(
            f"{path} (the {artifact.name}) does not match what S{STEPS.index(artifact.step) + 1} "
            f"{artifact.step} writes now ({first}): {_rerun_hint(artifact)}"
        ) from error


def write(artifact: Artifact, content: StepFile, workdir: Path, where: str | None = None) -> Path:
    """Write a step's typed JSON file (as the step always wrote it: indented, its own keys) and return its path."""
    if artifact.model is None or not isinstance(content, artifact.model):
        raise TypeError(f"the {artifact.name} is written from a {artifact.model}, not {type(content).__name__}")
    path = path_of(artifact, workdir, where)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content.as_dict(), indent=2, default=str))
    return path
