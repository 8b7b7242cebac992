"""S5 task: SFT of each cluster's selected SLM on the cluster's training split, tracked in MLflow.

Per cluster the run logs: the effective settings (with that cluster's overrides), the data version (DVC md5 of the
inputs when dvc.lock vouches for them, and the content hash of the training split), loss curves per step (train and
validation), the final figures, the prompt spec and chat template, and the adapter as a model. A Prefect retry
resumes from the last checkpoint, and a cluster whose finished adapter has the same fingerprint is not retrained.
Under ``accelerate launch`` (several GPUs) every rank trains; only rank 0 logs and writes.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core import artifacts
from components.core.budget import TimeBudget
from components.core.config import resolve
from components.core.schema import CallRecord, read_records
from components.core.step_files import FinetunedCluster
from components.curate.anonymize import anonymize_records, build_anonymizer
from components.finetune.cluster_training import TrainedCluster, TrainingDirs, summary_entry, train_clusters
from components.finetune.runs import UnsupportedDeviceError, dvc_md5s, is_main_process, records_sha256
from components.finetune.train import FinetuneConfig, FinetuneResult, finetune, training_settings
from tasks.helpers.evaluation_log import log_dataset
from tasks.helpers.progress import Progress, say
from tasks.helpers.registry import log_adapter_model
from tasks.helpers.tracking import TrackingConfig, flatten, step_run


def _step_reporter(label: str):
    progress = Progress(label)

    def report(step: int, total: int, loss: float) -> None:
        progress.label = f"{label} (loss {loss:.3f})"
        progress(step, total)

    return report


def _teacher_anonymizer(cfg: FinetuneConfig, workdir: Path):
    """S2's anonymization for teacher output (S2's curation already holds for it: it is verified on the way in)."""
    if cfg.anonymize is None:
        raise ValueError(
            "finetune.synthesis is on but no anonymize section was given: teacher output must be anonymized"
        )
    section = cfg.anonymize
    anonymizer = build_anonymizer(section, workdir)

    def anonymize(records: list[CallRecord]) -> list[CallRecord]:
        return anonymize_records(records, section, anonymizer=anonymizer)[0]

    return anonymize


def retry_on_interrupted_training(task, task_run, state) -> bool:
    """Retry what may pass on a second try (a lost worker, CUDA out of memory, a busy disk): the retry resumes
    from the last checkpoint. Bad input, a missing file or a machine without the asked-for GPU stay as they are."""
    try:
        state.result()
    except (ValueError, KeyError, FileNotFoundError, UnsupportedDeviceError):
        return False
    except Exception:
        return True
    return False


def _log_cluster_run(prefix: str, cfg: FinetuneConfig, result: FinetuneResult, data_version: dict) -> None:
    mlflow.log_params({f"{prefix}.{key}": value for key, value in flatten(training_settings(cfg)).items()})
    mlflow.log_params({f"{prefix}.data.{key}": value for key, value in flatten(data_version).items()})
    # What `device: auto` and `precision: auto` resolved to on this machine (the settings above keep "auto").
    mlflow.log_params({f"{prefix}.device_used": result.device, f"{prefix}.precision_used": result.precision})
    mlflow.set_tag(f"{prefix}.fingerprint", result.fingerprint)
    if not result.reused:  # a reused adapter's curves were logged by the run that trained it
        for step, loss in result.loss_history:
            mlflow.log_metric(f"{prefix}.train_loss", loss, step=step)
        for step, loss in result.eval_loss_history:
            mlflow.log_metric(f"{prefix}.eval_loss", loss, step=step)
    figures = {
        "seconds": result.seconds,
        "steps": result.steps,
        "n_train": result.n_train,
        "n_validation": len(result.validation_record_ids),
        "too_long_left_out": len(result.too_long_record_ids),
        "mean_tokens_per_call": result.mean_tokens_per_call,
        "trained_tokens": result.trained_tokens,
        "trained_tokens_per_second": result.trained_tokens / result.seconds if result.seconds else 0.0,
        "stopped_early": float(result.stopped_early),
        "reused": float(result.reused),
        "final_eval_loss": result.eval_loss,
    }
    for side in ("before", "after"):  # tokens per call with the full prompt and with the spec's context window
        tokens = (result.prompt_tokens or {}).get(side) or {}
        figures |= {f"tokens_per_call_{side}.{key}": value for key, value in tokens.items()}
    mlflow.log_metrics({f"{prefix}.{key}": float(value) for key, value in figures.items() if value is not None})
    adapter = Path(result.adapter_dir)
    for name in ("prompt_spec.json", "chat_template.jinja", "tokenizer_config.json"):
        if (adapter / name).exists():
            mlflow.log_artifact(str(adapter / name), artifact_path=prefix)


@task(name="S5 finetune", retry_condition_fn=retry_on_interrupted_training, cache_policy=NO_CACHE)
def finetune_task(
    cfg: FinetuneConfig, workdir: Path, tracking: TrackingConfig | None = None, parent_run_id: str | None = None
) -> dict:
    main = is_main_process()
    with step_run("finetune", cfg, workdir, tracking, parent_run_id) if main else nullcontext():
        records = {r.record_id: r for r in read_records(artifacts.path_of(artifacts.CURATED, workdir, cfg.curated))}
        splits = pd.read_parquet(artifacts.path_of(artifacts.SPLITS, workdir, cfg.splits))
        leaderboard = artifacts.read(artifacts.LEADERBOARD, workdir, cfg.leaderboard)
        inputs_md5 = dvc_md5s(workdir, [cfg.curated, cfg.splits])

        def record_trained(trained: TrainedCluster) -> FinetunedCluster | None:
            """Log the cluster's MLflow run, training set and adapter model (rank 0 only); its summary line."""
            if not main:
                return None
            cluster_id, result = trained.cluster.cluster_id, trained.result
            data_version = {"train_split_sha256": records_sha256(trained.train_records), "dvc_md5": inputs_md5}
            _log_cluster_run(f"cluster_{cluster_id}", trained.config, result, data_version)
            by_origin = trained.examples_by_origin
            mlflow.log_metrics({f"cluster_{cluster_id}.examples.{o}": float(n) for o, n in by_origin.items()})
            log_dataset(trained.set_frame, f"cluster_{cluster_id}_training_set", trained.set_path, context="training")
            model_uri = log_adapter_model(f"cluster-{cluster_id}", Path(result.adapter_dir), result.base_model)
            return summary_entry(trained, model_uri, data_version)

        summary = train_clusters(
            leaderboard,
            records,
            splits,
            cfg,
            TrainingDirs(
                adapters=artifacts.path_of(artifacts.ADAPTERS, workdir, cfg.output_dir),
                checkpoints=resolve(workdir, cfg.checkpoint_dir),
                training_sets=artifacts.path_of(artifacts.TRAINING_SETS, workdir, cfg.training_sets),
            ),
            budget=TimeBudget(cfg.time_budget_minutes, "S5", "finetune.time_budget_minutes"),
            record_trained=record_trained,
            anonymize=_teacher_anonymizer(cfg, workdir) if cfg.synthesis.enabled else None,
            progress=Progress,
            step_reporter=_step_reporter,
            say=say,
            writes=main,
            train=finetune,
        )
        if main:
            mlflow.log_artifact(str(artifacts.write(artifacts.FINETUNE_SUMMARY, summary, workdir, cfg.summary)))
            if summary.coverage and summary.coverage.covered_share is not None:
                mlflow.log_metric("covered_train_share", summary.coverage.covered_share)
    return summary.as_dict()
