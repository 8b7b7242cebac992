"""S3 task: embed, cluster and label the curated calls; write assignments, clusters, splits and a report."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlflow
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.config import resolve
from components.discover import DiscoverConfig, discover, embed_texts, task_text, write_cluster_report
from components.schema import read_records, write_table
from tasks.parallel import map_partitions
from tasks.progress import say
from tasks.retries import retry_on_transient_io
from tasks.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


@task(name="S3 discover", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def discover_task(cfg: DiscoverConfig, workdir: Path, tracking: TrackingConfig | None = None,
                  parent_run_id: str | None = None, partitions: int = 1) -> dict:
    with step_run("discover", cfg, workdir, tracking, parent_run_id):
        records = read_records(resolve(workdir, cfg.input))
        embeddings = None
        if partitions > 1 and records:  # the embedding is the data-parallel part; clustering needs them all
            texts = [task_text(record) for record in records]
            embeddings = np.concatenate(map_partitions(partial(embed_texts, model_ref=cfg.embedding_model),
                                                       texts, partitions))
        result = discover(records, cfg, embeddings=embeddings)
        write_table(result.assignments, resolve(workdir, cfg.assignments))
        write_table(result.splits, resolve(workdir, cfg.splits))
        log_json_artifact(result.clusters, resolve(workdir, cfg.clusters))
        report = write_cluster_report(result, resolve(workdir, cfg.report))
        mlflow.log_artifact(str(report))
        to_convert = [c for c in result.clusters if c["convert"]]
        summary = {"records": len(records), "clusters": len(result.clusters),
                   "clusters_to_convert": len(to_convert), "outlier_share": result.outlier_share}
        log_numeric_metrics(summary)
    labels = "; ".join(f"#{c['cluster_id']} {c['label']} ({c['size']})" for c in to_convert)
    say(f"S3 discover: {summary['clusters']} clusters, outliers {summary['outlier_share']:.0%}; "
        f"to convert: {labels or 'none'}")
    if not to_convert:
        largest = max((c["size"] for c in result.clusters), default=0)
        say(f"S3 discover: no cluster reaches min_cluster_size_to_convert={cfg.min_cluster_size_to_convert} "
            f"(largest: {largest} calls); every call stays with the LLM and S4-S6 have nothing to convert")
    return summary
