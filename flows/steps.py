"""Which config class and task belong to which step, so the flow and the CLI share one table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.anonymize import AnonymizeConfig
from components.collect import CollectConfig
from components.config import StepConfig, load_params, load_section
from components.discover import DiscoverConfig
from components.evaluate import EvaluateConfig
from components.finetune import FinetuneConfig
from components.select import SelectConfig
from tasks.parallel import ExecutionConfig
from tasks.tracking import TrackingConfig

STEP_CONFIGS: dict[str, type[StepConfig]] = {
    "collect": CollectConfig,
    "anonymize": AnonymizeConfig,
    "discover": DiscoverConfig,
    "select": SelectConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
}

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


def load_pipeline_config(params_path: Path, experiment: str | None = None) -> PipelineConfig:
    params = load_params(params_path)
    steps = {name: load_section(params, name, config) for name, config in STEP_CONFIGS.items()}
    tracking = load_section(params, "tracking", TrackingConfig)
    if experiment:
        tracking = tracking.model_copy(update={"experiment": experiment})
    # Optional section: without it everything runs in-process, as before.
    execution = ExecutionConfig.model_validate(params.get("execution") or {})
    return PipelineConfig(params, steps, tracking, execution)
