"""S2 task: curate the collected calls (duplicates, refusals, invalid tool calls, length, language), anonymize
what is kept with Presidio, and write the curated set, its audit (JSON + HTML) and, only if configured, the
encrypted reverse map."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core.config import resolve
from components.core.schema import read_records, write_records
from components.curate.anonymize import AnonymizeConfig, anonymize_records, build_anonymizer
from components.curate.audit import keyed_removals, merge_audits, render_audit_html
from components.curate.filters import curate
from components.curate.pseudonyms import Pseudonymizer
from tasks.helpers.parallel import map_partitions
from tasks.helpers.progress import Progress, say
from tasks.helpers.retries import retry_on_transient_io
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


def _write_private(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(payload)


@task(name="S2 anonymize", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def anonymize_task(
    cfg: AnonymizeConfig,
    workdir: Path,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
    partitions: int = 1,
) -> dict:
    with step_run("anonymize", cfg, workdir, tracking, parent_run_id):
        records = read_records(resolve(workdir, cfg.input))
        curation = curate(records, cfg.curate)
        say(f"S2 curate: {len(curation.removed)} of {len(records)} records removed {curation.counts or ''}")
        if partitions > 1:
            if cfg.pseudonyms.reverse_map:
                raise ValueError(
                    "anonymize.pseudonyms.reverse_map needs one partition (execution.partitions: 1): "
                    "each partition would hold only its own part of the map"
                )
            curated, audit = anonymize_partitioned(curation.kept, cfg, partitions, workdir)
        else:
            anonymizer = build_anonymizer(cfg, workdir)
            curated, audit = anonymize_records(
                curation.kept, cfg, anonymizer=anonymizer, progress=Progress("S2 anonymize", len(curation.kept))
            )
        # Removed records are listed by keyed id and reason only (no text), so nothing leaves S2 unaccounted for.
        audit["curation"] = {
            "records_in": len(records),
            "records_removed": len(curation.removed),
            "removed_by_reason": curation.counts,
            "removed": keyed_removals(curation.removed, Pseudonymizer(cfg.pseudonyms).keyed_id),
        }
        write_records(curated, resolve(workdir, cfg.output))
        if cfg.pseudonyms.reverse_map:
            _write_private(
                resolve(workdir, cfg.pseudonyms.reverse_map), anonymizer.pseudonymizer.encrypted_reverse_map()
            )
        # The audit holds counts, entity types, ids and anonymized examples only, so it may go to MLflow.
        log_numeric_metrics({key: value for key, value in audit.items() if key != "examples"})
        log_json_artifact(audit, resolve(workdir, cfg.audit))
        if cfg.audit_html:
            html_path = resolve(workdir, cfg.audit_html)
            html_path.parent.mkdir(parents=True, exist_ok=True)
            html_path.write_text(render_audit_html(audit))
            mlflow.log_artifact(str(html_path))
    say(f"S2 anonymize: {audit['records_with_pii']} of {audit['records_in']} records had PII replaced")
    return audit


def anonymize_partition(records: list, cfg: AnonymizeConfig, workdir: Path) -> tuple[list, dict]:
    """One partition with its own analyzer (a Dask worker process cannot share the caller's)."""
    return anonymize_records(records, cfg, anonymizer=build_anonymizer(cfg, workdir))


def anonymize_partitioned(records: list, cfg: AnonymizeConfig, partitions: int, workdir: Path) -> tuple[list, dict]:
    """Pseudonyms are per record (or keyed, for the dataset scope), so partitions anonymize independently (on the
    Dask cluster when there is one); their audits add up to the audit of one pass."""
    started = time.perf_counter()
    parts = map_partitions(partial(anonymize_partition, cfg=cfg, workdir=workdir), records, partitions)
    curated = [record for part_records, _ in parts for record in part_records]
    audit = merge_audits([audit for _, audit in parts], time.perf_counter() - started, cfg.audit_examples)
    return curated, audit
