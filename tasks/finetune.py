"""S5 task: LoRA SFT of each cluster's selected SLM on the cluster's training split."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.config import resolve
from components.finetune import FinetuneConfig, finetune
from components.schema import read_records, split_records
from tasks.registry import log_adapter_model
from tasks.progress import Progress, say
from tasks.tracking import TrackingConfig, log_json_artifact, step_run


def _step_reporter(label: str):
    progress = Progress(label)

    def report(step: int, total: int, loss: float) -> None:
        progress.label = f"{label} (loss {loss:.3f})"
        progress(step, total)

    return report


@task(name="S5 finetune", cache_policy=NO_CACHE)
def finetune_task(cfg: FinetuneConfig, workdir: Path, tracking: TrackingConfig | None = None,
                  parent_run_id: str | None = None) -> dict:
    with step_run("finetune", cfg, workdir, tracking, parent_run_id):
        records = {r.record_id: r for r in read_records(resolve(workdir, cfg.curated))}
        splits = pd.read_parquet(resolve(workdir, cfg.splits))
        leaderboard = json.loads(resolve(workdir, cfg.leaderboard).read_text())
        trained, skipped = [], []
        for cluster in leaderboard["clusters"]:
            cluster_id = cluster["cluster_id"]
            if not cluster.get("selected"):
                skipped.append({"cluster_id": cluster_id, "label": cluster["label"],
                                "reason": "no candidate SLM passed S4 (see the leaderboard)"})
                continue
            train_records = split_records(records, splits, cluster_id, "train")
            say(f"S5 finetune: cluster #{cluster_id} '{cluster['label']}', {len(train_records)} calls, "
                f"base {cluster['selected']}")
            try:
                result = finetune(cluster["selected_ref"], train_records, cfg,
                                  resolve(workdir, cfg.output_dir) / f"cluster_{cluster_id}",
                                  progress_callback=_step_reporter(f"S5 cluster #{cluster_id}"))
            except ValueError as error:  # e.g. every call longer than max_length: this cluster stays with the LLM
                say(f"S5 finetune: cluster #{cluster_id} not trained: {error}")
                skipped.append({"cluster_id": cluster_id, "label": cluster["label"], "reason": str(error)})
                continue
            if result.too_long_record_ids:
                say(f"S5 finetune: cluster #{cluster_id}: {len(result.too_long_record_ids)} calls longer than "
                    f"max_length={cfg.max_length} tokens left out of training")
            for step, loss in enumerate(result.loss_history, start=1):
                mlflow.log_metric(f"cluster_{cluster_id}.train_loss", loss, step=step)
            mlflow.log_metrics({f"cluster_{cluster_id}.seconds": result.seconds,
                                f"cluster_{cluster_id}.steps": result.steps,
                                f"cluster_{cluster_id}.too_long_left_out": len(result.too_long_record_ids)})
            model_uri = log_adapter_model(f"cluster-{cluster_id}", Path(result.adapter_dir), result.base_model)
            trained.append({"cluster_id": cluster_id, "label": cluster["label"],
                            "n_train": len(train_records) - len(result.too_long_record_ids),
                            "too_long_record_ids": result.too_long_record_ids,
                            "base_model": result.base_model, "adapter_dir": str(result.adapter_dir),
                            "model_uri": model_uri, "steps": result.steps, "train_loss": result.train_loss,
                            "seconds": round(result.seconds, 1),
                            "trainable_parameters": result.trainable_parameters})
        summary = {"clusters": trained, "skipped": skipped}
        log_json_artifact(summary, resolve(workdir, cfg.summary))
    return summary
