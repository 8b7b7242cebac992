"""Which config class and task belong to which step, so the flow and the CLI share one table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.collect.ingest import CollectConfig, source_specs
from components.core.artifacts import STEPS, step_files
from components.core.config import StepConfig, load_params, load_section, resolve
from components.core.stage_lock import StageLock
from components.curate.anonymize import AnonymizeConfig
from components.discover.discovery import DiscoverConfig
from components.evaluate.evaluation import EvaluateConfig
from components.finetune.train import FinetuneConfig
from components.select.benchmark import SelectConfig
from components.slm.prompt_pruning import TrainingWindow
from tasks.helpers.parallel import ExecutionConfig
from tasks.helpers.tracking import TrackingConfig

STEP_CONFIGS: dict[str, type[StepConfig]] = {
    "collect": CollectConfig,
    "anonymize": AnonymizeConfig,
    "discover": DiscoverConfig,
    "select": SelectConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
}

# Each step's files, by the field names of its config: (inputs, outputs), derived from the artifact catalog
# (components/core/artifacts.py), which dvc.yaml is checked against: the stage locks of `llm2slm run --resume`.
# S1's inputs are its sources (see step_lock); a step also reads an output it keeps between runs (S1's records
# and state, S3's model), which the lock checks as an unchanged output.
STEP_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {name: step_files(name) for name in STEPS}


def step_lock(name: str, cfg: StepConfig, workdir: Path, input_path: Path | None = None) -> StageLock:
    """The stage lock of one step: its params section, and the files the table names (None fields left out).
    S1 reads its sources: each file or folder is digested; an MLflow source makes the step never up to date."""
    input_fields, output_fields = STEP_FILES[name]

    def paths(fields: tuple[str, ...]) -> tuple[Path, ...]:
        return tuple(resolve(workdir, getattr(cfg, f)) for f in fields if getattr(cfg, f) is not None)

    inputs: tuple[Path, ...] | None = paths(input_fields)
    params: dict[str, Any] = {"config": cfg.model_dump(mode="json")}
    if name == "collect":
        specs = source_specs(cfg, workdir, [str(input_path)] if input_path else ())
        params["sources"] = [spec.kind for spec in specs]
        inputs = None if any(spec.kind == "mlflow" for spec in specs) else tuple(Path(s.location) for s in specs)
    return StageLock(name, workdir, params, inputs, paths(output_fields))


# params.yaml beside the code: the default when the current directory has none (e.g. `--workdir` elsewhere).
PACKAGED_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def default_params_path() -> Path:
    local = Path("params.yaml")
    return local if local.exists() else PACKAGED_PARAMS


@dataclass(frozen=True)
class PipelineConfig:
    params: dict[str, Any]
    steps: dict[str, StepConfig]
    tracking: TrackingConfig
    execution: ExecutionConfig = ExecutionConfig()


def _promotion(params: dict[str, Any]) -> Any:
    from components.evaluate.promotion import PromotionPolicy

    return load_section(params, "promotion", PromotionPolicy)


def _training_window(finetune: FinetuneConfig) -> TrainingWindow:
    return TrainingWindow(prompt_pruning=finetune.prompt_pruning, max_length=finetune.max_length)


# Values one step's config carries but params.yaml writes once, elsewhere: (step, field) -> (where it lives, how to
# read it). A step section that sets one of them is an error naming that place (two copies of a rule drift apart).
SHARED_VALUES: dict[tuple[str, str], tuple[str, Callable[[dict[str, Any]], Any]]] = {
    ("discover", "min_test_calls"): ("promotion.min_test_calls", lambda p: _promotion(p).min_test_calls),
    ("evaluate", "promotion"): ("the top-level promotion: section", _promotion),
    ("evaluate", "slm_hourly_cost_usd"): (
        "select.hardware_prices_usd_per_hour[select.serving_hardware]",
        lambda p: load_section(p, "select", SelectConfig).hourly_cost_usd,
    ),
    ("evaluate", "slm_serving_hardware"): (
        "select.serving_hardware",
        lambda p: load_section(p, "select", SelectConfig).serving_hardware,
    ),
    ("evaluate", "cluster_model_dir"): (
        "discover.model_dir",
        lambda p: load_section(p, "discover", DiscoverConfig).model_dir,
    ),
    ("evaluate", "finetune"): ("the finetune: section", lambda p: load_section(p, "finetune", FinetuneConfig)),
    ("select", "training_window"): (
        "finetune.prompt_pruning and finetune.max_length",
        lambda p: _training_window(load_section(p, "finetune", FinetuneConfig)),
    ),
    # teacher output (finetune.synthesis) is anonymized by S2's own settings
    ("finetune", "anonymize"): ("the anonymize: section", lambda p: load_section(p, "anonymize", AnonymizeConfig)),
}


def load_step(params: dict[str, Any], name: str) -> StepConfig:
    """One step's config: its params section plus the values written once elsewhere (SHARED_VALUES)."""
    config = load_section(params, name, STEP_CONFIGS[name])
    shared = {field: value for (step, field), value in SHARED_VALUES.items() if step == name}
    for field, (place, _) in shared.items():
        if field in (params[name] or {}):
            raise ValueError(f"params.yaml: '{name}.{field}' is not set here: it is set once, in {place}")
    return config.model_copy(update={field: read(params) for field, (_, read) in shared.items()})


def _check_pinned_agents_survive_s2(steps: dict[str, StepConfig]) -> None:
    """S2 keeps an agent name only if anonymize.agent_labels lists it: a task pinned by another agent name would
    match nothing in the curated calls."""
    labels = set(getattr(steps.get("anonymize"), "agent_labels", []))
    pinned = [task.agent for task in getattr(steps.get("discover"), "pinned_tasks", []) if task.agent is not None]
    missing = sorted(set(pinned) - labels)
    if missing:
        raise ValueError(f"discover.pinned_tasks name agents {missing} that are not in anonymize.agent_labels")


def load_pipeline_config(params_path: Path, experiment: str | None = None) -> PipelineConfig:
    params = load_params(params_path)
    steps = {name: load_step(params, name) for name in STEP_CONFIGS}
    _check_pinned_agents_survive_s2(steps)
    tracking = load_section(params, "tracking", TrackingConfig)
    if experiment:
        tracking = tracking.model_copy(update={"experiment": experiment})
    # Optional section: without it everything runs in-process, as before.
    execution = ExecutionConfig.model_validate(params.get("execution") or {})
    return PipelineConfig(params, steps, tracking, execution)
