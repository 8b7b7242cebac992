"""The Prefect flow `llm_to_slm`: S1 collect -> S2 anonymize -> S3 discover -> S4 select -> S5 finetune ->
S6 evaluate. It only composes the tasks; data moves between them as files under the work directory. The flow
run ends by publishing the evaluation's headline and per-cluster table as a Markdown artifact.

Each step that succeeds records a stage lock (components/core/stage_lock.py). With ``resume=True`` a step whose lock
still matches (same params, same input files, outputs present and unchanged) is skipped as up to date, so a run
restarted after a crash picks up where the last one stopped; S5 itself resumes from its last checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prefect import flow

from components.core import artifacts
from components.core.config import StepConfig
from components.curate.anonymize import AnonymizeConfig
from components.discover.discovery import DiscoverConfig
from flows.finetune import run_finetune
from flows.steps import load_pipeline_config, step_lock
from tasks.anonymize import anonymize_task
from tasks.collect import collect_task
from tasks.discover import discover_task
from tasks.evaluate import evaluate_task
from tasks.helpers.flow_artifacts import publish_conversion
from tasks.helpers.parallel import ExecutionConfig, dask_task_runner
from tasks.helpers.progress import say
from tasks.helpers.tracking import TrackingConfig, end_parent_run, start_parent_run
from tasks.select import select_task

T = TypeVar("T")


def run_step(
    name: str,
    cfg: StepConfig,
    root: Path,
    resume: bool,
    skipped: list[str],
    run: Callable[[], T],
    input_path: Path | None = None,
) -> T | None:
    """Run one step and record its stage lock; with ``resume``, skip it (None) when the lock says up to date."""
    lock = step_lock(name, cfg, root, input_path)
    if resume:
        stale = lock.why_stale()
        if stale is None:
            say(f"{name}: up to date (params, inputs and outputs unchanged since {lock.path}), skipped")
            skipped.append(name)
            return None
        say(f"{name}: runs ({stale})")
    lock.invalidate()  # a step stopped half-way must not look finished
    result = run()
    lock.record()
    return result


@flow(name="llm_to_slm")
def llm_to_slm(
    params_path: str,
    workdir: str = ".",
    input_path: str | None = None,
    experiment: str | None = None,
    resume: bool = False,
) -> dict:
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = load_pipeline_config(Path(params_path), experiment)
    steps, tracking = config.steps, config.tracking
    source = Path(input_path).resolve() if input_path else None
    parent = start_parent_run(root, tracking, "llm_to_slm", {k: v for k, v in config.params.items() if k in steps})
    skipped: list[str] = []
    try:
        collected = run_step(
            "collect",
            steps["collect"],
            root,
            resume,
            skipped,
            lambda: collect_task(steps["collect"], root, tracking, parent, source),
            source,
        )
        if collected is None:  # up to date: the figures of the run that wrote it
            collected = json.loads(
                artifacts.path_of(artifacts.COLLECT_SUMMARY, root, steps["collect"].summary).read_text()
            )
        skipped += data_parallel_steps(steps, root, tracking, parent, config.execution, resume)
        run_step(
            "select",
            steps["select"],
            root,
            resume,
            skipped,
            lambda: select_task(steps["select"], root, tracking, parent),
        )
        run_step(
            "finetune",
            steps["finetune"],
            root,
            resume,
            skipped,  # in-process, or on a GPU pool
            lambda: run_finetune(steps["finetune"], root, tracking, parent),
        )
        evaluation = run_step(
            "evaluate",
            steps["evaluate"],
            root,
            resume,
            skipped,
            lambda: evaluate_task(steps["evaluate"], root, tracking, parent),
        )
        if evaluation is None:
            evaluation = artifacts.read(artifacts.EVALUATION, root, steps["evaluate"].evaluation).as_dict()
    except BaseException:
        end_parent_run(parent, "FAILED")
        raise
    end_parent_run(parent)
    publish_conversion(evaluation, parent)  # the flow run's Artifacts tab: headline, clusters, the MLflow run
    return {
        "parent_run_id": parent,
        "quarantined": collected["quarantined"],
        "records": collected["records"],
        "evaluation": evaluation,
        "report": str(root / steps["evaluate"].report),
        "evaluation_path": str(root / steps["evaluate"].evaluation),
        "skipped": skipped,
    }


def data_parallel_steps(
    steps: dict, root: Path, tracking: TrackingConfig, parent: str, execution: ExecutionConfig, resume: bool = False
) -> list[str]:
    """S2 and S3 in-process by default; with `execution.task_runner: dask`, as a subflow on prefect-dask's
    DaskTaskRunner, their record partitions spread over the Dask cluster. Returns the steps skipped as up to date."""
    if execution.task_runner == "dask":
        on_dask = s2_s3_on_dask.with_options(task_runner=dask_task_runner(execution))
        return on_dask(steps["anonymize"], steps["discover"], root, tracking, parent, execution.partitions, resume)
    return s2_s3(
        steps["anonymize"], steps["discover"], root, tracking, parent, execution.partitions, resume, submit=False
    )


@flow(name="llm_to_slm S2-S3 on Dask")
def s2_s3_on_dask(
    anonymize: AnonymizeConfig,
    discover: DiscoverConfig,
    root: Path,
    tracking: TrackingConfig,
    parent: str,
    partitions: int,
    resume: bool = False,
) -> list[str]:
    return s2_s3(anonymize, discover, root, tracking, parent, partitions, resume, submit=True)


def s2_s3(
    anonymize: AnonymizeConfig,
    discover: DiscoverConfig,
    root: Path,
    tracking: TrackingConfig,
    parent: str,
    partitions: int,
    resume: bool,
    submit: bool,
) -> list[str]:
    skipped: list[str] = []
    for name, task, cfg in (("anonymize", anonymize_task, anonymize), ("discover", discover_task, discover)):

        def run(task=task, cfg=cfg):
            if submit:  # .submit() hands the step to the flow's task runner (a call would run it in this process)
                return task.submit(cfg, root, tracking, parent, partitions=partitions).result()
            return task(cfg, root, tracking, parent, partitions=partitions)

        run_step(name, cfg, root, resume, skipped, run)
    return skipped
