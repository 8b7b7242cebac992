"""S1 task: collect the logged calls from every source into the (encrypted) records file, incrementally."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.collect.ingest import (
    CollectConfig,
    SourceError,
    collect_sources,
    load_state,
    source_specs,
    write_quarantine,
    write_state,
)
from components.core.config import resolve
from components.core.schema import read_records, write_records
from tasks.helpers.progress import say
from tasks.helpers.retries import retry_on_transient_io
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


def fetch_mlflow_traces(
    tracking_uri: str, experiment: str, since_ms: int | None, until_ms: int | None
) -> list[dict[str, Any]]:
    """The experiment's traces in the window, oldest first, in MLflow's serialized form (what
    components/collect/sources/mlflow_traces.py maps). Uses a client of its own: the step's run is tracked elsewhere."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        # MLflow would create an empty store there and find nothing: a typo must be an error instead.
        raise SourceError(f"no MLflow store at {tracking_uri}")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise SourceError(f"MLflow experiment '{experiment}' not found at {tracking_uri}")
        conditions = [f"trace.timestamp_ms >= {since_ms}"] if since_ms is not None else []
        conditions += [f"trace.timestamp_ms < {until_ms}"] if until_ms is not None else []
        traces, token = [], None
        while True:
            page = client.search_traces(
                locations=[found.experiment_id],
                filter_string=" AND ".join(conditions) or None,
                order_by=["timestamp_ms ASC"],
                max_results=500,
                page_token=token,
            )
            traces += [trace.to_dict() for trace in page]
            token = page.token
            if not token:
                return traces
    except MlflowException as error:
        raise SourceError(
            f"cannot read MLflow traces at {tracking_uri}: {error.message.splitlines()[0][:300]}"
        ) from None


# Stage-level caching is DVC's job; inside a flow run every step reads the files the previous one wrote.
@task(
    name="S1 collect", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE
)
def collect_task(
    cfg: CollectConfig,
    workdir: Path,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
    input_path: Path | None = None,
    sources: Sequence[str] = (),
    full_refresh: bool = False,
) -> dict:
    specs = source_specs(cfg, workdir, [str(input_path)] if input_path else sources)
    output, state_path = resolve(workdir, cfg.output), resolve(workdir, cfg.state)
    with step_run("collect", cfg, workdir, tracking, parent_run_id):
        keep = output.exists() and not full_refresh
        result = collect_sources(
            specs,
            cfg,
            read_records(output) if keep else [],
            load_state(state_path, keep),
            trace_fetcher=fetch_mlflow_traces,
        )
        # S1's records still hold raw prompts (PII): encrypted at rest; read_records decrypts transparently.
        write_records(result.records, output, encrypt=True)
        write_state(result.state, state_path)
        quarantine = write_quarantine(result.quarantine, resolve(workdir, cfg.quarantine))
        summary = {"sources": [spec.key for spec in specs], **result.summary()}
        log_numeric_metrics({k: v for k, v in summary.items() if k not in ("new_by_input", "quarantined_by_input")})
        log_json_artifact(summary, resolve(workdir, cfg.summary))
        mlflow.log_artifact(str(quarantine))
        if not result.records:
            raise ValueError(
                f"no valid LLM call in {', '.join(s.key for s in specs)}: "
                f"{len(result.quarantine)} inputs were quarantined, see {quarantine} for the reasons"
            )
    say(
        f"S1 collect: {summary['records']} records ({summary['new_records']} new, "
        f"{summary['duplicates_skipped']} already collected, {summary['repeats_kept']} repeats of earlier calls), "
        f"{summary['quarantined']} quarantined -> {quarantine}"
    )
    return summary
