"""The Prefect flow `llm_to_slm`: S1 collect -> S2 anonymize -> S3 discover -> S4 select -> S5 finetune ->
S6 evaluate. It only composes the tasks; data moves between them as files under the work directory."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.finetune import run_finetune
from flows.steps import load_pipeline_config
from tasks.anonymize import anonymize_task
from tasks.collect import collect_task
from tasks.discover import discover_task
from tasks.evaluate import evaluate_task
from tasks.select import select_task
from tasks.tracking import end_parent_run, start_parent_run


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
        anonymize_task(steps["anonymize"], root, tracking, parent)
        discover_task(steps["discover"], root, tracking, parent)
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
