"""S1 task: collect the logged calls into Parquet, quarantining what does not fit."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.collect import CollectConfig, collect_file, write_quarantine
from components.config import resolve
from components.schema import write_records
from tasks.progress import say
from tasks.retries import retry_on_transient_io
from tasks.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


# Stage-level caching is DVC's job; inside a flow run every step reads the files the previous one wrote.
@task(name="S1 collect", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_transient_io,
      cache_policy=NO_CACHE)
def collect_task(cfg: CollectConfig, workdir: Path, tracking: TrackingConfig | None = None,
                 parent_run_id: str | None = None, input_path: Path | None = None) -> dict:
    source = input_path or resolve(workdir, cfg.input)
    with step_run("collect", cfg, workdir, tracking, parent_run_id):
        result = collect_file(source, cfg)
        write_records(result.records, resolve(workdir, cfg.output))
        quarantine = write_quarantine(result.quarantine, resolve(workdir, cfg.quarantine))
        summary = {"input": str(source), **result.summary()}
        log_numeric_metrics(summary)
        log_json_artifact(summary, resolve(workdir, cfg.summary))
        mlflow.log_artifact(str(quarantine))
        if not result.records:
            raise ValueError(f"no valid LLM call in {source}: all {len(result.quarantine)} lines were quarantined, "
                             f"see {quarantine} for the reasons")
    say(f"S1 collect: {summary['records']} records, {summary['quarantined']} lines quarantined -> {quarantine}")
    return summary
