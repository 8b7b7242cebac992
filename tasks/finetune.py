"""S5 task: SFT of each cluster's selected SLM on the cluster's training split, tracked in MLflow.

Per cluster the run logs: the effective settings (with that cluster's overrides), the data version (DVC md5 of the
inputs when dvc.lock vouches for them, and the content hash of the training split), loss curves per step (train and
validation), the final figures, the prompt spec and chat template, and the adapter as a model. A Prefect retry
resumes from the last checkpoint, and a cluster whose finished adapter has the same fingerprint is not retrained.
Under ``accelerate launch`` (several GPUs) every rank trains; only rank 0 logs and writes.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core.config import resolve
from components.core.schema import read_records, split_records
from components.finetune.runs import UnsupportedDeviceError, dvc_md5s, is_main_process, records_sha256
from components.finetune.train import FinetuneConfig, FinetuneResult, config_for_cluster, finetune, training_settings
from tasks.helpers.progress import Progress, say
from tasks.helpers.registry import log_adapter_model
from tasks.helpers.tracking import TrackingConfig, flatten, log_json_artifact, step_run


def _step_reporter(label: str):
    progress = Progress(label)

    def report(step: int, total: int, loss: float) -> None:
        progress.label = f"{label} (loss {loss:.3f})"
        progress(step, total)

    return report


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
        trained, skipped = [], []
        for cluster in leaderboard["clusters"]:
            cluster_id = cluster["cluster_id"]
            if not cluster.get("selected"):
                skipped.append(
                    {
                        "cluster_id": cluster_id,
                        "label": cluster["label"],
                        "reason": "no candidate SLM passed S4 (see the leaderboard)",
                    }
                )
                continue
            cluster_cfg = config_for_cluster(cfg, cluster_id)
            train_records = split_records(records, splits, cluster_id, "train")
            say(
                f"S5 finetune: cluster #{cluster_id} '{cluster['label']}', {len(train_records)} calls, "
                f"base {cluster['selected']}"
            )
            try:
                result = finetune(
                    cluster["selected_ref"],
                    train_records,
                    cluster_cfg,
                    resolve(workdir, cfg.output_dir) / f"cluster_{cluster_id}",
                    progress_callback=_step_reporter(f"S5 cluster #{cluster_id}"),
                    checkpoint_dir=resolve(workdir, cfg.checkpoint_dir) / f"cluster_{cluster_id}",
                )
            except ValueError as error:  # e.g. every call longer than max_length: this cluster stays with the LLM
                say(f"S5 finetune: cluster #{cluster_id} not trained: {error}")
                skipped.append({"cluster_id": cluster_id, "label": cluster["label"], "reason": str(error)})
                continue
            if result.reused:
                say(f"S5 finetune: cluster #{cluster_id}: same data and settings as the finished adapter, reused")
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
            _log_cluster_run(f"cluster_{cluster_id}", cluster_cfg, result, data_version)
            model_uri = log_adapter_model(f"cluster-{cluster_id}", Path(result.adapter_dir), result.base_model)
            trained.append(
                {
                    "cluster_id": cluster_id,
                    "label": cluster["label"],
                    "n_train": result.n_train,
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
                    "mean_tokens_per_call": round(result.mean_tokens_per_call, 1),
                    "prompt_spec": result.prompt_spec,
                    "prompt_tokens": result.prompt_tokens,
                    "device": result.device,
                    "dtype": result.dtype,
                    "precision": result.precision,
                    "trainable_parameters": result.trainable_parameters,
                    "reused": result.reused,
                    "resumed_from_step": result.resumed_from_step,
                    "data_version": data_version,
                }
            )
        summary = {"clusters": trained, "skipped": skipped}
        if main:
            log_json_artifact(summary, resolve(workdir, cfg.summary))
    return summary
