"""S4 task: benchmark the catalog candidates zero-/few-shot per conversion cluster and pick one each."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components import slm
from components.core import artifacts
from components.core.assets import resolve_model_ref
from components.core.clusters import read_cluster_table
from components.core.config import resolve
from components.core.schema import read_records, write_table
from components.core.step_files import Leaderboard
from components.scoring.judge import make_judge
from components.scoring.labels import read_ground_truth
from components.select.answering import candidate_answerer
from components.select.benchmark import SelectConfig, benchmark_candidates, leaderboard_table, metrics_view
from components.slm.catalog import load_catalog
from components.slm.prompt_pruning import calls_in_window
from tasks.helpers.progress import Progress, say
from tasks.helpers.retries import retry_on_transient_io
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


def make_embedder(model_ref: str):
    """A texts -> unit vectors function, loading the sentence-transformers model on first use only (a run
    without few-shot or text clusters never pays for it)."""
    model = []

    def embed(texts):
        if not model:
            from sentence_transformers import SentenceTransformer

            model.append(SentenceTransformer(resolve_model_ref(model_ref), device="cpu"))
        return model[0].encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)

    return embed


def make_trainable_counter(cfg: SelectConfig, catalog):
    """Training calls -> how many fit S5's window, counted with the first candidate's tokenizer (small models'
    tokenizers differ by tens of percent, not by the factor that puts a cluster out of the window); None when
    the finetune: window is unknown."""
    if cfg.training_window is None or not cfg.candidates:
        return None
    tokenizer = []

    def count(train_records):
        if not tokenizer:
            from transformers import AutoTokenizer

            try:
                reference = slm.prepare_model(catalog.entry(cfg.candidates[0]).ref)
                tokenizer.append(AutoTokenizer.from_pretrained(reference))
            except (OSError, KeyError, ValueError):  # the candidate's own benchmark reports why it cannot load
                tokenizer.append(None)
        return None if tokenizer[0] is None else calls_in_window(train_records, tokenizer[0], cfg.training_window)

    return count


@task(name="S4 select", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def select_task(
    cfg: SelectConfig, workdir: Path, tracking: TrackingConfig | None = None, parent_run_id: str | None = None
) -> dict:
    with step_run("select", cfg, workdir, tracking, parent_run_id):
        records = {r.record_id: r for r in read_records(resolve(workdir, cfg.curated))}
        clusters = read_cluster_table(resolve(workdir, cfg.clusters))
        splits = pd.read_parquet(resolve(workdir, cfg.splits))
        labels = read_ground_truth(resolve(workdir, cfg.ground_truth)) if cfg.ground_truth else None
        catalog = load_catalog(resolve(workdir, cfg.catalog) if cfg.catalog else None)  # like every params path
        result = benchmark_candidates(
            records,
            clusters,
            splits,
            cfg,
            catalog,
            candidate_answerer(cfg.batch_size, cfg.constrained_decoding, Progress),
            slm.parse_completion,
            embed=make_embedder(cfg.embedding_model),
            judge=make_judge(cfg.judge),
            ground_truth=labels,
            count_trainable=make_trainable_counter(cfg, catalog),
        )
        write_table(result.predictions, resolve(workdir, cfg.predictions))
        write_table(result.candidate_predictions, resolve(workdir, cfg.candidate_predictions))
        table = leaderboard_table(result.leaderboard)
        table_path = resolve(workdir, cfg.leaderboard_table)
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(table_path, index=False)
        mlflow.log_artifact(str(table_path))
        mlflow.log_table(table, artifact_file="leaderboard_table.json")
        leaderboard = Leaderboard.model_validate(result.leaderboard)
        for report in leaderboard.clusters:
            for entry in report.results:
                log_numeric_metrics(
                    {
                        **entry["scores"],
                        "cost_per_1k_calls_usd": entry["cost_per_1k_calls_usd"],
                        "latency_ms_p95": entry["latency_ms_p95"],
                    },
                    f"cluster_{report.cluster_id}.{entry['candidate']}.{entry['mode']}.",
                )
        mlflow.log_artifact(str(artifacts.write(artifacts.LEADERBOARD, leaderboard, workdir, cfg.leaderboard)))
        log_json_artifact(metrics_view(result.leaderboard), resolve(workdir, cfg.metrics))
    for candidate in leaderboard.candidates:
        if candidate["status"] == "skipped":
            say(f"S4 select: {candidate['name']} skipped: {candidate['reason']}")
    for report in leaderboard.clusters:
        say(f"S4 select: cluster #{report.cluster_id} -> {report.selected} ({report.selected_mode}): {report.reason}")
    return result.leaderboard
