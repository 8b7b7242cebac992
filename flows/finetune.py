"""Where S5 runs: in-process (the embedded default), or as the flow `s5-finetune` on a GPU work pool.

With ``finetune.dispatch.deployment`` set, the conversion flow starts that deployment (a deployment of
:func:`finetune_flow` whose work pool has GPU workers) as a sub-flow run and waits for it; the worker reads and
writes the same work directory, so it must be shared storage mounted at the same path (README "GPU workers").
Without it, the task runs where the conversion runs, with ``finetune.retries`` Prefect retries that resume from
the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.core import artifacts
from components.finetune.train import FinetuneConfig
from tasks.finetune import finetune_task
from tasks.helpers.tracking import TrackingConfig


@flow(name="s5-finetune")
def finetune_flow(cfg: dict, workdir: str, tracking: dict | None = None, parent_run_id: str | None = None) -> dict:
    """S5 alone: what a GPU worker runs. Settings arrive as plain dicts (deployment parameters are JSON)."""
    config = FinetuneConfig.model_validate(cfg)
    return finetune_task.with_options(retries=config.retries)(
        config, Path(workdir), TrackingConfig.model_validate(tracking or {}), parent_run_id
    )


def run_finetune(
    cfg: FinetuneConfig, workdir: Path, tracking: TrackingConfig | None = None, parent_run_id: str | None = None
) -> dict:
    """S5 where params.yaml says: the configured deployment (GPU pool), else in-process."""
    if cfg.dispatch.deployment is None:
        return finetune_task.with_options(retries=cfg.retries, tags=cfg.dispatch.tags)(
            cfg, workdir, tracking, parent_run_id
        )
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        name=cfg.dispatch.deployment,
        parameters={
            "cfg": cfg.model_dump(mode="json"),
            "workdir": str(workdir),
            "tracking": (tracking or TrackingConfig()).model_dump(mode="json"),
            "parent_run_id": parent_run_id,
        },
        work_queue_name=cfg.dispatch.work_queue,
        tags=cfg.dispatch.tags,
        as_subflow=True,
    )
    if flow_run.state is None or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        raise RuntimeError(f"S5 on deployment {cfg.dispatch.deployment!r} ended {state} (flow run {flow_run.id})")
    # written by the worker into the shared work dir
    return artifacts.read(artifacts.FINETUNE_SUMMARY, workdir, cfg.summary).as_dict()
