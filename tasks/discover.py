"""S3 task: embed (through the cache), cluster and label the curated calls, keep cluster ids stable against the
previous fit; write assignments, clusters, splits, the cluster model, the map and the report."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlflow
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core.clusters import cluster_table_json
from components.core.config import resolve
from components.core.schema import read_records, write_table
from components.discover.discovery import DiscoverConfig, discover, embed_records, write_cluster_report
from components.discover.identity import load_model, save_model
from tasks.helpers.parallel import map_partitions
from tasks.helpers.progress import say
from tasks.helpers.retries import retry_on_transient_io
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


def embed_partition(records: list, cfg: DiscoverConfig) -> np.ndarray:
    """The task embeddings of one partition (a module-level function, so a Dask worker process can run it)."""
    return embed_records(records, cfg)[0]


@task(name="S3 discover", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def discover_task(
    cfg: DiscoverConfig,
    workdir: Path,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
    partitions: int = 1,
) -> dict:
    with step_run("discover", cfg, workdir, tracking, parent_run_id):
        records = read_records(resolve(workdir, cfg.input))
        model_dir = resolve(workdir, cfg.model_dir)
        # An earlier fit in this work dir: its cluster ids are kept for the clusters that match (cluster_identity).
        previous = load_model(model_dir) if (model_dir / "model.json").exists() else None
        cache_dir = resolve(workdir, cfg.embedding_cache) if cfg.embedding_cache else None
        embeddings = None
        if partitions > 1 and records:  # the embedding is the data-parallel part; clustering needs them all
            # Partitions embed without the cache: its shards are appended by one writer at a time.
            embeddings = np.concatenate(map_partitions(partial(embed_partition, cfg=cfg), records, partitions))
        result = discover(records, cfg, embeddings=embeddings, previous=previous, cache_dir=cache_dir)
        write_table(result.assignments, resolve(workdir, cfg.assignments))
        write_table(result.splits, resolve(workdir, cfg.splits))
        log_json_artifact(cluster_table_json(result.clusters), resolve(workdir, cfg.clusters))
        if result.model is not None:
            save_model(result.model, model_dir)
            mlflow.log_artifacts(str(model_dir), "cluster_model")
        report = write_cluster_report(result, resolve(workdir, cfg.report), resolve(workdir, cfg.cluster_map))
        mlflow.log_artifact(str(report))
        if resolve(workdir, cfg.cluster_map).exists():
            mlflow.log_artifact(str(resolve(workdir, cfg.cluster_map)))
        to_convert = [c for c in result.clusters if c.convert]
        summary = {
            "records": len(records),
            "clusters": len(result.clusters),
            "candidates": sum(c.candidate for c in result.clusters),
            "clusters_to_convert": len(to_convert),
            "outlier_share": result.outlier_share,
            "texts_embedded_now": result.embedded_now,
            **{f"request_only_{k}": v for k, v in (result.identity_check or {}).items() if k != "calls"},
            "kept_cluster_ids": len(
                {c.cluster_id for c in result.clusters} & set(previous.cluster_ids if previous else [])
            ),
        }
        log_numeric_metrics(summary)
        log_numeric_metrics(
            {f"cluster_{c.cluster_id}": {"size": c.size, "fitness": c.fitness} for c in result.clusters}
        )
    labels = "; ".join(f"#{c.cluster_id} {c.label} ({c.size}, fitness {c.fitness:.2f})" for c in to_convert)
    say(
        f"S3 discover: {summary['clusters']} clusters ({summary['candidates']} candidates), outliers "
        f"{summary['outlier_share']:.0%}, {summary['texts_embedded_now']} texts embedded (the rest cached); "
        + (
            f"request-only assignment agrees with the fit on {summary['request_only_agreement']:.0%} of held-out "
            "calls; "
            if "request_only_agreement" in summary
            else ""
        )
        + f"to convert: {labels or 'none'}"
    )
    if not to_convert:
        largest = max((c.size for c in result.clusters), default=0)
        say(
            f"S3 discover: no cluster passes the conversion thresholds (min_cluster_size_to_convert="
            f"{cfg.min_cluster_size_to_convert}, fitness.*; largest: {largest} calls; see the reasons in "
            f"{cfg.report}); every call stays with the LLM and S4-S6 have nothing to convert"
        )
    return summary
