"""S2 task: curate the collected calls (duplicates, refusals, invalid tool calls, length, language), anonymize
what is kept with Presidio, and write the curated set, its audit (JSON + HTML) and, only if configured, the
encrypted reverse map."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.anonymize import AnonymizeConfig, Anonymizer, anonymize_records, load_deny_list
from components.audit import render_audit_html
from components.config import resolve
from components.curate import curate
from components.schema import read_records, write_records
from tasks.progress import Progress, say
from tasks.retries import retry_on_transient_io
from tasks.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


def _write_private(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(payload)


@task(name="S2 anonymize", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def anonymize_task(cfg: AnonymizeConfig, workdir: Path, tracking: TrackingConfig | None = None,
                   parent_run_id: str | None = None) -> dict:
    with step_run("anonymize", cfg, workdir, tracking, parent_run_id):
        records = read_records(resolve(workdir, cfg.input))
        curation = curate(records, cfg.curate)
        say(f"S2 curate: {len(curation.removed)} of {len(records)} records removed {curation.counts or ''}")
        deny_list = load_deny_list(resolve(workdir, cfg.deny_list_file)) if cfg.deny_list_file else None
        anonymizer = Anonymizer(cfg, deny_list=deny_list)
        curated, audit = anonymize_records(curation.kept, cfg, progress=Progress("S2 anonymize", len(curation.kept)),
                                           anonymizer=anonymizer)
        # Removed records are listed by id and reason only (no text), so nothing leaves S2 unaccounted for.
        audit["curation"] = {"records_in": len(records), "records_removed": len(curation.removed),
                             "removed_by_reason": curation.counts, "removed": curation.removed}
        write_records(curated, resolve(workdir, cfg.output))
        if cfg.pseudonyms.reverse_map:
            _write_private(resolve(workdir, cfg.pseudonyms.reverse_map), anonymizer.pseudonymizer.encrypted_reverse_map())
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
