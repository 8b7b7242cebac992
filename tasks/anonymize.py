"""S2 task: curate the collected calls (duplicates, refusals, invalid tool calls), anonymize what is kept with
Presidio, and write the curated set and its audit."""

from __future__ import annotations

import time
from collections import Counter
from functools import partial
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.anonymize import AnonymizeConfig, anonymize_records
from components.config import resolve
from components.curate import curate
from components.schema import read_records, write_records
from tasks.parallel import map_partitions
from tasks.progress import Progress, say
from tasks.retries import retry_on_transient_io
from tasks.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


@task(name="S2 anonymize", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def anonymize_task(cfg: AnonymizeConfig, workdir: Path, tracking: TrackingConfig | None = None,
                   parent_run_id: str | None = None, partitions: int = 1) -> dict:
    with step_run("anonymize", cfg, workdir, tracking, parent_run_id):
        records = read_records(resolve(workdir, cfg.input))
        curation = curate(records, cfg.curate)
        say(f"S2 curate: {len(curation.removed)} of {len(records)} records removed {curation.counts or ''}")
        if partitions > 1:
            curated, audit = anonymize_partitioned(curation.kept, cfg, partitions)
        else:
            curated, audit = anonymize_records(curation.kept, cfg,
                                               progress=Progress("S2 anonymize", len(curation.kept)))
        # Removed records are listed by id and reason only (no text), so nothing leaves S2 unaccounted for.
        audit["curation"] = {"records_in": len(records), "records_removed": len(curation.removed),
                             "removed_by_reason": curation.counts, "removed": curation.removed}
        write_records(curated, resolve(workdir, cfg.output))
        # The audit holds counts and entity types only, never a raw value, so it may go to MLflow.
        log_numeric_metrics(audit)
        log_json_artifact(audit, resolve(workdir, cfg.audit))
    say(f"S2 anonymize: {audit['records_with_pii']} of {audit['records_in']} records had PII replaced")
    return audit


def anonymize_partitioned(records: list, cfg: AnonymizeConfig, partitions: int) -> tuple[list, dict]:
    """Pseudonyms are per record, so partitions anonymize independently (on the Dask cluster when there is one);
    their audits add up to the audit of one pass."""
    started = time.perf_counter()
    parts = map_partitions(partial(anonymize_records, cfg=cfg), records, partitions)
    curated = [record for part_records, _ in parts for record in part_records]
    audits = [audit for _, audit in parts]
    audit = dict(audits[0])
    for key in ("records_in", "records_out", "records_with_pii"):
        audit[key] = sum(a[key] for a in audits)
    audit["entities"] = dict(sorted(sum((Counter(a["entities"]) for a in audits), Counter()).items()))
    audit["seconds"] = round(time.perf_counter() - started, 3)
    audit["records_per_second"] = round(len(records) / audit["seconds"], 2) if audit["seconds"] > 0 else None
    audit["partitions"] = len(audits)
    return curated, audit
