"""The Prefect flow `llm_to_slm`: S1 collect -> S2 anonymize -> S3 discover -> S4 select -> S5 finetune ->
S6 evaluate. It only composes the tasks; data moves between them as files under the work directory."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.anonymize import AnonymizeConfig
from components.discover import DiscoverConfig
from flows.finetune import run_finetune
from flows.steps import load_pipeline_config
from tasks.parallel import ExecutionConfig, dask_task_runner
from tasks.anonymize import anonymize_task
from tasks.collect import collect_task
from tasks.discover import discover_task
from tasks.evaluate import evaluate_task
from tasks.select import select_task
from tasks.tracking import TrackingConfig, end_parent_run, start_parent_run


@flow(name="llm_to_slm")
def llm_to_slm(params_path: str, workdir: str = ".", input_path: str | None = None,
               experiment: str | None = None) -> dict:
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = load_pipeline_config(Path(params_path), experiment)
    steps, tracking = config.steps, config.tracking
    parent = start_parent_run(root, tracking, "llm_to_slm", {k: v for k, v in config.params.items()
                                                              if k in steps})
    try:
        collected = collect_task(steps["collect"], root, tracking, parent,
                                 Path(input_path).resolve() if input_path else None)
        data_parallel_steps(steps, root, tracking, parent, config.execution)
        select_task(steps["select"], root, tracking, parent)
        run_finetune(steps["finetune"], root, tracking, parent)  # in-process, or on a GPU pool
        evaluation = evaluate_task(steps["evaluate"], root, tracking, parent)
    except BaseException:
        end_parent_run(parent, "FAILED")
        raise
    end_parent_run(parent)
    return {"parent_run_id": parent, "quarantined": collected["quarantined"], "records": collected["records"],
            "evaluation": evaluation, "report": str(root / steps["evaluate"].report),
            "evaluation_path": str(root / steps["evaluate"].evaluation)}


def data_parallel_steps(steps: dict, root: Path, tracking: TrackingConfig, parent: str,
                        execution: ExecutionConfig) -> None:
    """S2 and S3 in-process by default; with `execution.task_runner: dask`, as a subflow on prefect-dask's
    DaskTaskRunner, their record partitions spread over the Dask cluster."""
    if execution.task_runner == "dask":
        on_dask = s2_s3_on_dask.with_options(task_runner=dask_task_runner(execution))
        on_dask(steps["anonymize"], steps["discover"], root, tracking, parent, execution.partitions)
        return
    anonymize_task(steps["anonymize"], root, tracking, parent, partitions=execution.partitions)
    discover_task(steps["discover"], root, tracking, parent, partitions=execution.partitions)


@flow(name="llm_to_slm S2-S3 on Dask")
def s2_s3_on_dask(anonymize: AnonymizeConfig, discover: DiscoverConfig, root: Path, tracking: TrackingConfig,
                  parent: str, partitions: int) -> None:
    # .submit() hands each step to the flow's task runner (a direct call would run it in this process).
    anonymize_task.submit(anonymize, root, tracking, parent, partitions=partitions).result()
    discover_task.submit(discover, root, tracking, parent, partitions=partitions).result()
