"""S5 finetune: supervised fine-tuning of the selected SLM on one cluster's training calls, with TRL's SFTTrainer.

Each call becomes a conversational prompt-completion example (prompt = the cluster's compact prompt, see
components/slm/prompt_pruning.py; completion = the LLM's response as :func:`render_target` writes it), so the loss
falls on the response only. LoRA is a switch (off: full fine-tune, same code path), QLoRA a second one (CUDA only).
Precision (``precision``) is bf16 mixed precision where the hardware has native bf16 (CUDA, or a CPU with
AVX-512 BF16/AMX: torch autocast over fp32 weights), else fp32; the same trainer either way.
A seeded share of the calls is held out for early stopping on eval loss; checkpoints let a killed run resume, and
a fingerprint in the output folder lets an identical finished run be skipped (components/finetune/runs.py).
Experiment tracking is the caller's job; this module reports the figures through :class:`FinetuneResult`.

Multi-GPU: the same entry point under ``accelerate launch`` (DDP, or FSDP with infra/accelerate_fsdp.yaml); the
Trainer picks the distributed set-up from the launcher's environment.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.curate.anonymize import AnonymizeConfig
from components.finetune.augment import AugmentationSettings
from components.finetune.runs import (
    Device,
    detect_device,
    finished_result,
    is_main_process,
    mark_finished,
    prepare_checkpoints,
    run_fingerprint,
    split_validation,
)
from components.finetune.speed import base_weights_dtype, score_answer_positions_only
from components.finetune.synthesis import SynthesisSettings
from components.slm import (
    answer_token_budget,
    build_messages,
    count_parameters,
    prepare_model,
    render_target,
    tool_call_budget,
)
from components.slm.prompt_pruning import (
    PromptSpec,
    PruningSettings,
    call_tokens,
    derive_prompt_spec,
    fits_window,
    prompt_token_report,
    save_prompt_spec,
)

# (global step, total steps, training loss of that step)
FinetuneProgress = Callable[[int, int, float], None]
MERGED_FOLDER = "merged"


class LoraSettings(StepConfig):
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


class EarlyStopping(StepConfig):
    patience: int = 3  # evaluations without a better validation score before training stops
    threshold: float = 0.0  # how much better counts as better
    # The validation score: "eval_loss" (lower is better) or "eval_mean_token_accuracy" (TRL's share of answer
    # tokens predicted right; higher is better).
    metric: Literal["eval_loss", "eval_mean_token_accuracy"] = "eval_loss"


class Dispatch(StepConfig):
    """Where the step runs when the flow runs on a Prefect server (see tasks/finetune.py); null = in-process."""

    deployment: str | None = None  # e.g. "s5-finetune/gpu": flows/finetune.py deployed to a GPU work pool
    work_queue: str | None = None  # a queue of that pool (e.g. "h100")
    tags: list[str] = []


class FinetuneConfig(StepConfig):
    curated: str = "data/curated/records.parquet"
    splits: str = "data/splits/splits.parquet"
    leaderboard: str = "reports/leaderboard.json"
    output_dir: str = "models/adapters"
    summary: str = "reports/finetune.json"
    training_sets: str = "data/training"  # one Parquet of examples per cluster, each with its metadata.origin
    checkpoint_dir: str = "models/checkpoints"  # not a DVC output: it must survive a killed `dvc repro`
    lora: LoraSettings = LoraSettings()
    prompt_pruning: PruningSettings = PruningSettings()
    quantization: Literal["none", "4bit"] = "none"  # 4bit = QLoRA, CUDA only
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # auto: bf16 mixed precision on a CUDA GPU with bf16 and on a CPU with native bf16 (avx512_bf16/amx_bf16), else
    # fp32 (components/finetune/runs.py resolve_precision); the one used is reported per cluster
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    learning_rate: float = 1.0e-3
    max_steps: int = 60  # -1 trains num_train_epochs instead
    num_train_epochs: float = 1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    gradient_checkpointing: bool = False
    packing: bool = False  # best-fit packing without padding (TRL "bfd")
    group_by_length: bool = False  # batches of similar length: less padding
    torch_threads: int | None = None  # CPU threads for torch; null = torch's default
    # CPU levers (components/finetune/speed.py, benchmarks/finetune_speed.py): the LM head only on the answer's
    # positions; the frozen base in bf16 under LoRA + bf16 (adapter and optimizer fp32); torch.compile.
    answer_logits_only: bool = True
    bf16_base_weights: bool = True
    torch_compile: bool = False
    validation_fraction: float = 0.1
    min_validation_records: int = 4
    min_records_for_validation: int = 20  # smaller clusters train on every call, without early stopping
    eval_steps: int = 4  # evaluate (and checkpoint) every so many steps when there is a validation split
    save_steps: int = 4  # checkpoint every so many steps when there is none
    early_stopping: EarlyStopping = EarlyStopping()
    merge_adapter: bool = False  # also write base + adapter merged into <adapter>/merged
    seed: int = 42
    # Wall-clock minutes S5 may spend; no cluster is started after that (in S3's conversion order), the one training
    # stops after its current step (its best adapter kept, the run resumable), and each one left is listed in
    # reports/finetune.json with the reason. None: no limit.
    time_budget_minutes: float | None = 8
    retries: int = 1  # Prefect retries of the step; a retried run resumes from its last checkpoint
    dispatch: Dispatch = Dispatch()
    augmentation: AugmentationSettings = AugmentationSettings()  # components/finetune/augment.py
    synthesis: SynthesisSettings = SynthesisSettings()  # components/finetune/synthesis.py
    # S2's section, so teacher output is anonymized exactly as logged calls are (set from params.yaml's anonymize:)
    anonymize: AnonymizeConfig | None = None
    overrides: dict[str, dict[str, Any]] = {}  # cluster id -> settings that differ for that cluster


# Settings that do not change what a run learns: left out of the fingerprint and not overridable per cluster.
_NOT_TRAINING = {
    "curated",
    "splits",
    "leaderboard",
    "output_dir",
    "summary",
    "training_sets",
    "anonymize",
    "checkpoint_dir",
    "retries",
    "time_budget_minutes",
    "dispatch",
    "overrides",
    "torch_threads",
}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


def config_for_cluster(cfg: FinetuneConfig, cluster_id: int | str) -> FinetuneConfig:
    """The settings for one cluster: the section, with that cluster's ``overrides`` entry merged in."""
    override = cfg.overrides.get(str(cluster_id), {})
    misplaced = sorted(set(override) & _NOT_TRAINING)
    if misplaced:
        raise ValueError(f"finetune.overrides[{cluster_id}] may only change training settings, not {misplaced}")
    return FinetuneConfig.model_validate(_deep_merge(cfg.model_dump(), override))


# Settings added after runs were fingerprinted, at the value that trains as before: left out of the fingerprint
# while at that value, so a finished run stays reusable after an upgrade.
# A key of one part is a top-level setting. (``precision: auto`` is hardware-dependent, like ``device: auto``.)
# Augmentation and synthesis act through the examples they add, which the fingerprint hashes anyway.
_LATER_SETTINGS = {
    ("early_stopping", "metric"): "eval_loss",
    ("precision",): "auto",
    ("answer_logits_only",): False,
    ("bf16_base_weights",): False,
    ("torch_compile",): False,
    ("augmentation",): AugmentationSettings().model_dump(mode="json"),
    ("synthesis",): SynthesisSettings().model_dump(mode="json"),
}


def training_settings(cfg: FinetuneConfig) -> dict[str, Any]:
    settings = {key: value for key, value in cfg.model_dump(mode="json").items() if key not in _NOT_TRAINING}
    for path, unchanged in _LATER_SETTINGS.items():
        *sections, key = path
        parent = settings
        for section in sections:
            parent = parent[section]
        if parent.get(key) == unchanged:
            del parent[key]
    return settings


@dataclass
class FinetuneResult:
    adapter_dir: str  # the LoRA adapter, or the whole model when LoRA is off
    base_model: str  # the prepared folder the adapter applies to
    steps: int
    train_loss: float  # loss of the last logged step
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    eval_loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    seconds: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    eval_loss: float | None = None  # of the kept (best) model on the validation calls
    stopped_early: bool = False
    too_long_record_ids: list[str] = field(default_factory=list)  # left out: longer than max_length tokens
    validation_record_ids: list[str] = field(default_factory=list)
    n_train: int = 0
    mean_tokens_per_call: float = 0.0  # prompt + answer, as trained
    trained_tokens: int = 0  # tokens through the model in training (padding excluded)
    prompt_spec: dict[str, Any] | None = None
    prompt_tokens: dict[str, Any] | None = None  # tokens per call before/after the spec, calls over max_length
    device: str = "cpu"
    dtype: str = "float32"  # of the weights as loaded
    precision: str = "fp32"  # the trainer's compute: "bf16" (mixed precision) or "fp32"
    fingerprint: str = ""
    resumed_from_step: int | None = None  # the checkpoint an interrupted run went on from
    # The step's time budget ran out mid-training: this adapter is the best so far, and the run is left unfinished
    # (its checkpoint kept), so the next run with the same data and settings goes on from it.
    stopped_by_budget: bool = False
    reused: bool = False  # a finished run with the same fingerprint was found: nothing trained
    merged_dir: str | None = None


def training_device(cfg: FinetuneConfig) -> Device:
    """Where and in what precision S5 trains, with the dtype its frozen base loads in (speed.base_weights_dtype)."""
    device = detect_device(cfg.device, cfg.quantization, cfg.lora.enabled, precision=cfg.precision)
    weights = base_weights_dtype(
        precision=device.precision,
        on_cuda=device.on_cuda,
        lora=cfg.lora.enabled and cfg.quantization == "none",
        bf16_base_weights=cfg.bf16_base_weights,
    )
    return device if device.on_cuda else replace(device, dtype_name=weights)


def to_training_example(record: CallRecord, spec: PromptSpec | None = None) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational prompt-completion form."""
    return {
        "prompt": build_messages(record, spec),
        "completion": [{"role": "assistant", "content": render_target(record.response)}],
    }


def example_length(record: CallRecord, tokenizer: Any, spec: PromptSpec | None = None) -> int:
    return call_tokens(record, tokenizer, spec)


def split_by_length(
    records: list[CallRecord], tokenizer: Any, max_length: int, spec: PromptSpec | None = None
) -> tuple[list[CallRecord], list[str]]:
    """The records whose prompt + answer fit in ``max_length`` tokens, and the ids of those that do not.

    TRL would cut a longer example (a truncated answer teaches the model never to finish its call) or drop it
    without a word when the prompt alone fills the window; leaving them out here makes the choice visible.
    """
    fitting, too_long = [], []
    for record in records:
        (fitting if fits_window(record, tokenizer, spec, max_length) else too_long).append(record)
    return fitting, [record.record_id for record in too_long]


def _records_dataset(records: list[CallRecord], spec: PromptSpec | None) -> Any:
    from datasets import Dataset

    return Dataset.from_list([to_training_example(record, spec) for record in records])


def _load_base(base_folder: str, cfg: FinetuneConfig, device: Device) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": device.dtype}
    if cfg.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=device.dtype,
        )
    return AutoModelForCausalLM.from_pretrained(base_folder, **kwargs)


def build_trainer(
    base_folder: str,
    train_records: list[CallRecord],
    cfg: FinetuneConfig,
    output_dir: Path,
    eval_records: list[CallRecord] | None = None,
    callbacks: list[Any] | None = None,
    tokenizer: Any = None,
    spec: PromptSpec | None = None,
    device: Device | None = None,
) -> Any:
    """The configured SFTTrainer (not yet trained); separate so tests can inspect its tokenized dataset.
    ``output_dir`` is where the trainer writes its checkpoints."""
    from transformers import AutoTokenizer, EarlyStoppingCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    device = device or training_device(cfg)
    score_answer_positions_only(cfg.answer_logits_only)
    set_seed(cfg.seed)  # before the model exists: LoRA's A matrices are drawn at wrapping time
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(base_folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    peft_config = None
    if cfg.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    validating = bool(eval_records)
    args = SFTConfig(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        activation_checkpointing=cfg.gradient_checkpointing,  # the new name of gradient_checkpointing
        completion_only_loss=True,  # explicit: the prompt (system, tools, history) is context, not a target
        packing=cfg.packing,
        torch_compile=cfg.torch_compile,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not device.on_cuda,
        bf16=device.precision == "bf16",  # mixed precision: torch autocast (over bf16 or fp32 weights on CPU)
        optim="adamw_torch_fused" if device.on_cuda else "adamw_torch",
        # Checkpoints make a killed run resumable; with a validation split they are also the early-stopping points.
        eval_strategy="steps" if validating else "no",
        eval_steps=cfg.eval_steps if validating else None,
        save_strategy="steps",
        save_steps=cfg.eval_steps if validating else cfg.save_steps,
        save_total_limit=2,
        load_best_model_at_end=validating,
        metric_for_best_model=cfg.early_stopping.metric if validating else None,
        greater_is_better=cfg.early_stopping.metric != "eval_loss" if validating else None,
        include_num_input_tokens_seen="non_padding",
        report_to="none",  # the caller tracks the run
        logging_steps=1,
        disable_tqdm=True,
    )
    if validating:
        callbacks = [
            *(callbacks or []),
            EarlyStoppingCallback(cfg.early_stopping.patience, cfg.early_stopping.threshold),
        ]
    return SFTTrainer(
        model=_load_base(base_folder, cfg, device),
        args=args,
        train_dataset=_records_dataset(train_records, spec),
        eval_dataset=_records_dataset(eval_records, spec) if validating else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def _progress_reporter(progress_callback: FinetuneProgress) -> Any:
    from transformers import TrainerCallback

    class ProgressReporter(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            if logs and "loss" in logs:
                progress_callback(state.global_step, state.max_steps, float(logs["loss"]))

    return ProgressReporter()


def _deadline_stopper(deadline: float, clock: Callable[[], float]) -> Any:
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        """Ends training after the step during which ``deadline`` passed, with a checkpoint of that step."""

        reached = False

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if clock() >= deadline:
                self.reached = control.should_training_stop = control.should_save = True

    return StopAtDeadline()


def _history(log_history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(entry["step"]), float(entry[key])) for entry in log_history if key in entry]


def merge_adapter(base_folder: str, adapter_dir: Path, target: Path) -> Path:
    """Base + adapter as one plain model folder (full precision, with tokenizer and prompt spec): what a serving
    stack without PEFT loads. The base is reloaded unquantized, so this also works after QLoRA."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.slm.prompt_pruning import load_prompt_spec

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(target)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(target)
    save_prompt_spec(load_prompt_spec(adapter_dir), target)
    return target


def finetune(
    base_reference: str,
    train_records: list[CallRecord],
    cfg: FinetuneConfig,
    output_dir: Path,
    eval_records: list[CallRecord] | None = None,
    progress_callback: FinetuneProgress | None = None,
    checkpoint_dir: Path | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FinetuneResult:
    """Train on the records and save the adapter (or full model), tokenizer and prompt spec into ``output_dir``.

    ``eval_records`` is the validation split; without it one is carved from ``train_records`` per the config.
    Checkpoints go to ``checkpoint_dir`` (default: beside ``output_dir``) and are removed once the run finished.
    ``deadline`` (on ``clock``, e.g. the step's time budget) stops training after the step it passes in: the
    adapter is saved, the run is not marked finished and its checkpoint stays, so the next call resumes it.
    """
    if not train_records:
        raise ValueError("no training records: nothing to fine-tune on")
    import torch
    from transformers import AutoTokenizer

    began = time.perf_counter()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = training_device(cfg)
    base_folder = prepare_model(base_reference)
    if eval_records is None:
        train_records, eval_records = split_validation(
            train_records, cfg.validation_fraction, cfg.min_validation_records, cfg.min_records_for_validation, cfg.seed
        )
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    spec = derive_prompt_spec(train_records, cfg.prompt_pruning, tokenizer, cfg.max_length)
    fingerprint = run_fingerprint(base_folder, train_records, eval_records, training_settings(cfg))
    previous = finished_result(output_dir, fingerprint)

    prompt_tokens = prompt_token_report(train_records + eval_records, tokenizer, spec, cfg.max_length)
    train_records, too_long = split_by_length(train_records, tokenizer, cfg.max_length, spec)
    eval_records, too_long_validation = split_by_length(eval_records, tokenizer, cfg.max_length, spec)
    too_long += too_long_validation
    if not train_records:
        after, before = prompt_tokens["after"], prompt_tokens["before"]
        raise ValueError(
            f"all {len(too_long)} training records are longer than max_length={cfg.max_length} tokens "
            f"(median {after['median']} tokens per call with the prompt spec, {before['median']} with the full prompt)"
        )
    # Serving then lets the model write about as much, and as many calls, as its largest training answer.
    spec.max_answer_tokens = answer_token_budget(
        [len(tokenizer(render_target(r.response), add_special_tokens=False)["input_ids"]) for r in train_records]
    )
    spec.max_tool_calls = tool_call_budget([len(r.response.tool_calls) for r in train_records])
    if previous is not None:
        # The same run finished before. Its spec is written again (beside a merged model too): a run of an older
        # release may lack fields that decoding reads (the call budget, or the whole spec when pruning was off).
        previous = {**previous, "prompt_spec": spec.model_dump(), "prompt_tokens": prompt_tokens}
        # Where the adapter is now: a work dir copied or moved since keeps its files, not the stored paths.
        previous["adapter_dir"] = str(output_dir)
        if previous.get("merged_dir"):
            previous["merged_dir"] = str(output_dir / MERGED_FOLDER)
        if is_main_process():
            for folder in (output_dir, previous.get("merged_dir")):
                if folder and Path(folder).is_dir():
                    save_prompt_spec(spec, Path(folder))
            mark_finished(output_dir, fingerprint, previous)
        # A run of an older release did not record its precision: it trained in bf16 exactly when it loaded bf16.
        previous.setdefault("precision", "bf16" if previous.get("dtype") == "bfloat16" else "fp32")
        return FinetuneResult(**{**previous, "reused": True})

    checkpoints = checkpoint_dir or output_dir.with_name(f"{output_dir.name}.checkpoints")
    resume_from = prepare_checkpoints(checkpoints, fingerprint)
    callbacks = [_progress_reporter(progress_callback)] if progress_callback else []
    stopper = _deadline_stopper(deadline, clock) if deadline is not None else None
    callbacks += [stopper] if stopper else []
    trainer = build_trainer(
        base_folder, train_records, cfg, checkpoints, eval_records, callbacks, tokenizer, spec, device
    )
    outcome = trainer.train(resume_from_checkpoint=resume_from)
    state = trainer.state
    losses, eval_losses = _history(state.log_history, "loss"), _history(state.log_history, "eval_loss")
    eval_loss = trainer.evaluate()["eval_loss"] if eval_records else None  # the best checkpoint's, once reloaded
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(output_dir))
    result = FinetuneResult(
        adapter_dir=str(output_dir),
        base_model=base_folder,
        steps=int(outcome.global_step),
        train_loss=losses[-1][1] if losses else float(outcome.training_loss),
        loss_history=losses,
        eval_loss_history=eval_losses,
        trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        total_parameters=count_parameters(trainer.model),
        eval_loss=float(eval_loss) if eval_loss is not None else None,
        stopped_early=state.global_step < state.max_steps and not (stopper and stopper.reached),
        too_long_record_ids=too_long,
        validation_record_ids=[record.record_id for record in eval_records],
        n_train=len(train_records),
        mean_tokens_per_call=sum(example_length(r, tokenizer, spec) for r in train_records) / len(train_records),
        trained_tokens=int(state.num_input_tokens_seen or 0),
        prompt_spec=spec.model_dump(),
        prompt_tokens=prompt_tokens,
        device=device.kind,
        dtype=device.dtype_name,
        precision=device.precision,
        fingerprint=fingerprint,
        resumed_from_step=int(Path(resume_from).name.split("-")[-1]) if resume_from else None,
        stopped_by_budget=bool(stopper and stopper.reached and state.global_step < state.max_steps),
    )
    if is_main_process():
        trainer.processing_class.save_pretrained(str(output_dir))
        save_prompt_spec(spec, output_dir)
        if cfg.merge_adapter and cfg.lora.enabled:
            result.merged_dir = str(merge_adapter(base_folder, output_dir, output_dir / MERGED_FOLDER))
        result.seconds = time.perf_counter() - began
        if not result.stopped_by_budget:
            mark_finished(output_dir, fingerprint, asdict(result))
            shutil.rmtree(checkpoints, ignore_errors=True)
    return result
