"""S5 task: SFT of each cluster's selected SLM on the cluster's training split, tracked in MLflow.

Per cluster the run logs: the effective settings (with that cluster's overrides), the data version (DVC md5 of the
inputs when dvc.lock vouches for them, and the content hash of the training split), loss curves per step (train and
validation), the final figures, the prompt spec and chat template, and the adapter as a model. A Prefect retry
resumes from the last checkpoint, and a cluster whose finished adapter has the same fingerprint is not retrained.
Under ``accelerate launch`` (several GPUs) every rank trains; only rank 0 logs and writes.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core.budget import TimeBudget
from components.core.config import resolve
from components.core.schema import CallRecord, read_records, records_to_frame, split_records, write_table
from components.curate.anonymize import anonymize_records, build_anonymizer
from components.finetune.dataset import TrainingSet, build_training_set, origin_of
from components.finetune.runs import UnsupportedDeviceError, dvc_md5s, is_main_process, records_sha256
from components.finetune.train import FinetuneConfig, FinetuneResult, config_for_cluster, finetune, training_settings
from tasks.helpers.evaluation_log import log_dataset
from tasks.helpers.progress import Progress, say
from tasks.helpers.registry import log_adapter_model
from tasks.helpers.tracking import TrackingConfig, flatten, log_json_artifact, step_run


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


def _write_training_set(training: TrainingSet, path: Path) -> pd.DataFrame:
    """The cluster's examples (``metadata.use``: train) and validation calls (``validation``), with their origin."""
    rows = [r.model_copy(update={"metadata": {**r.metadata, "use": "train"}}) for r in training.examples]
    rows += [r.model_copy(update={"metadata": {**r.metadata, "use": "validation"}}) for r in training.validation]
    frame = records_to_frame(rows)  # built once: written, and logged as the run's input
    write_table(frame, path)
    return frame


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
        records = {r.record_id: r for r in read_records(resolve(workdir, cfg.curated))}
        splits = pd.read_parquet(resolve(workdir, cfg.splits))
        leaderboard = json.loads(resolve(workdir, cfg.leaderboard).read_text())
        inputs_md5 = dvc_md5s(workdir, [cfg.curated, cfg.splits])
        anonymize = _teacher_anonymizer(cfg, workdir) if cfg.synthesis.enabled else None
        trained, skipped = [], []
        budget = TimeBudget(cfg.time_budget_minutes, "S5", "finetune.time_budget_minutes")
        for cluster in leaderboard["clusters"]:  # in S3's conversion order (S4 kept it)
            cluster_id = cluster["cluster_id"]
            if not cluster.get("selected"):
                reason = f"no candidate SLM passed S4: {cluster.get('reason') or 'see the leaderboard'}"
                skipped.append({"cluster_id": cluster_id, "label": cluster["label"], "reason": reason})
                continue
            if budget.spent():
                say(f"S5 finetune: cluster #{cluster_id} not trained: {budget.reason}")
                skipped.append({"cluster_id": cluster_id, "label": cluster["label"], "reason": budget.reason})
                continue
            cluster_cfg = config_for_cluster(cfg, cluster_id)
            train_records = split_records(records, splits, cluster_id, "train")
            held_out = split_records(records, splits, cluster_id, "test")
            training = build_training_set(
                train_records,
                [r.user_request for r in held_out],
                cluster_cfg,
                anonymize=anonymize,
                progress=Progress(f"S5 cluster #{cluster_id} teacher"),
            )
            set_path = resolve(workdir, cfg.training_sets) / f"cluster_{cluster_id}.parquet"
            set_frame = _write_training_set(training, set_path) if main else None
            say(
                f"S5 finetune: cluster #{cluster_id} '{cluster['label']}', {len(train_records)} logged calls, "
                f"{len(training.examples)} training examples {training.examples_by_origin}, base {cluster['selected']}"
            )
            try:
                result = finetune(
                    cluster["selected_ref"],
                    training.examples,
                    cluster_cfg,
                    resolve(workdir, cfg.output_dir) / f"cluster_{cluster_id}",
                    eval_records=training.validation,
                    progress_callback=_step_reporter(f"S5 cluster #{cluster_id}"),
                    checkpoint_dir=resolve(workdir, cfg.checkpoint_dir) / f"cluster_{cluster_id}",
                    deadline=budget.deadline,
                    clock=budget.clock,
                )
            except ValueError as error:  # e.g. every call longer than max_length: this cluster stays with the LLM
                say(f"S5 finetune: cluster #{cluster_id} not trained: {error}")
                skipped.append({"cluster_id": cluster_id, "label": cluster["label"], "reason": str(error)})
                continue
            if result.reused:
                say(f"S5 finetune: cluster #{cluster_id}: same data and settings as the finished adapter, reused")
            if result.stopped_by_budget:
                say(
                    f"S5 finetune: cluster #{cluster_id}: stopped at step {result.steps} by the time budget "
                    f"(finetune.time_budget_minutes); its best adapter so far is used, and the next run with the same "
                    "data and settings resumes from its checkpoint"
                )
            tokens = result.prompt_tokens or {}
            if tokens.get("before") and tokens.get("after"):
                say(
                    f"S5 finetune: cluster #{cluster_id}: tokens per call (median) {tokens['before']['median']} "
                    f"with the full prompt, {tokens['after']['median']} in the prompt spec's context window"
                )
            if result.too_long_record_ids:
                say(
                    f"S5 finetune: cluster #{cluster_id}: {len(result.too_long_record_ids)} calls longer than "
                    f"max_length={cluster_cfg.max_length} tokens left out of training"
                )
            if not main:
                continue
            data_version = {"train_split_sha256": records_sha256(train_records), "dvc_md5": inputs_md5}
            left_out = set(result.too_long_record_ids)
            by_origin = dict(Counter(origin_of(r) for r in training.examples if r.record_id not in left_out))
            _log_cluster_run(f"cluster_{cluster_id}", cluster_cfg, result, data_version)
            mlflow.log_metrics({f"cluster_{cluster_id}.examples.{o}": float(n) for o, n in by_origin.items()})
            log_dataset(set_frame, f"cluster_{cluster_id}_training_set", set_path, context="training")
            model_uri = log_adapter_model(f"cluster-{cluster_id}", Path(result.adapter_dir), result.base_model)
            trained.append(
                {
                    "cluster_id": cluster_id,
                    "label": cluster["label"],
                    "n_train": result.n_train,
                    "examples_by_origin": by_origin,
                    "augmentation": training.augmentation,
                    "synthesis": training.synthesis,
                    "training_set": str(set_path),
                    "n_validation": len(result.validation_record_ids),
                    "too_long_record_ids": result.too_long_record_ids,
                    "base_model": result.base_model,
                    "adapter_dir": str(result.adapter_dir),
                    "merged_dir": result.merged_dir,
                    "model_uri": model_uri,
                    "steps": result.steps,
                    "stopped_early": result.stopped_early,
                    "train_loss": result.train_loss,
                    "eval_loss": result.eval_loss,
                    "seconds": round(result.seconds, 1),
                    "train_tokens_per_second": round(result.trained_tokens / result.seconds, 1)
                    if result.seconds
                    else None,
                    "mean_tokens_per_call": round(result.mean_tokens_per_call, 1),
                    "prompt_spec": result.prompt_spec,
                    "prompt_tokens": result.prompt_tokens,
                    "device": result.device,
                    "dtype": result.dtype,
                    "precision": result.precision,
                    "trainable_parameters": result.trainable_parameters,
                    "reused": result.reused,
                    "resumed_from_step": result.resumed_from_step,
                    "stopped_by_budget": result.stopped_by_budget,
                    "data_version": data_version,
                }
            )
        summary = {"clusters": trained, "skipped": skipped}
        if main:
            log_json_artifact(summary, resolve(workdir, cfg.summary))
    return summary
