"""S4 task: benchmark the candidate SLMs zero-shot per conversion cluster and pick one each."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components import slm
from components.config import resolve
from components.schema import CallRecord, read_records, write_table
from components.select import Candidate, SelectConfig, benchmark_candidates
from tasks.progress import Progress, say
from tasks.retries import retry_on_transient_io
from tasks.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


def generate_answers(reference: str, records: list[CallRecord], max_new_tokens: int, batch_size: int,
                     label: str, adapter_dir: str | None = None, loaded=None) -> list[tuple[str, float]]:
    """Answer the records with a model (optionally with an adapter): [(completion, latency ms)].
    ``loaded`` is a (model, tokenizer) pair already in memory; without it the model is loaded here."""
    model, tokenizer = loaded or slm.load_model(reference, adapter_dir=adapter_dir)
    generations = slm.generate(model, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=Progress(label, len(records)))
    return [(g.text, g.latency_ms) for g in generations]


@task(name="S4 select", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def select_task(cfg: SelectConfig, workdir: Path, tracking: TrackingConfig | None = None,
                parent_run_id: str | None = None) -> dict:
    with step_run("select", cfg, workdir, tracking, parent_run_id):
        records = {r.record_id: r for r in read_records(resolve(workdir, cfg.curated))}
        clusters = json.loads(resolve(workdir, cfg.clusters).read_text())
        splits = pd.read_parquet(resolve(workdir, cfg.splits))

        loaded: dict[str, tuple] = {}  # each candidate is loaded once and answers every cluster

        def answer(candidate: Candidate, batch: list[CallRecord]) -> list[tuple[str, float]]:
            if candidate.ref not in loaded:
                loaded.clear()  # one candidate in memory at a time
                loaded[candidate.ref] = slm.load_model(candidate.ref)
            return generate_answers(candidate.ref, batch, cfg.max_new_tokens, cfg.batch_size,
                                    f"S4 {candidate.name}", loaded=loaded[candidate.ref])

        result = benchmark_candidates(records, clusters, splits, cfg, answer, slm.parse_completion)
        write_table(result.predictions, resolve(workdir, cfg.predictions))
        for report in result.leaderboard["clusters"]:
            for entry in report["results"]:
                log_numeric_metrics(entry["scores"], f"cluster_{report['cluster_id']}.{entry['candidate']}.")
        log_json_artifact(result.leaderboard, resolve(workdir, cfg.leaderboard))
    for report in result.leaderboard["clusters"]:
        say(f"S4 select: cluster #{report['cluster_id']} -> {report['selected']}")
    return result.leaderboard
