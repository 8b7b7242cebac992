"""S6 router report as a tracked step: read the proxy's store, summarise the routes, write the HTML page and log
the figures (per cluster and overall) and the page to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.collect.ingest import CollectConfig, collect_sources
from components.collect.sources import parse_source
from components.core.config import resolve
from components.evaluate.demotion import read_log
from components.serve.route_report import RouteReportConfig, route_report, write_route_report
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


@task(name="S6 route report", cache_policy=NO_CACHE)
def route_report_task(
    cfg: RouteReportConfig,
    collect_cfg: CollectConfig,
    workdir: Path,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    store = resolve(workdir, cfg.store_dir)
    out = resolve(workdir, cfg.out_dir)
    # No previous state: the report always covers the whole store.
    records = collect_sources([parse_source(f"proxy-store:{store}", workdir)], collect_cfg).records
    demotions = read_log(resolve(workdir, cfg.promotions_log))  # the router's demotions, with their figures
    summary = route_report(records, cfg.slm_hourly_cost_usd, cfg.slm_serving_hardware, demotions)
    with step_run("route-report", cfg, workdir, tracking, parent_run_id):
        page = write_route_report(summary, out / "route_report.html")
        log_json_artifact(summary, out / "route_summary.json")
        mlflow.log_artifact(str(page))
        log_numeric_metrics(
            {"overall": summary["overall"], **{f"cluster_{cid}": entry for cid, entry in summary["clusters"].items()}}
        )  # numbers only: the audited interval and the demotions' lines are in route_summary.json
    return {**summary, "report": str(page)}
