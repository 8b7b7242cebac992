"""S5 finetune: supervised fine-tuning of the selected SLM on one cluster's training calls, with TRL's SFTTrainer.

Each call becomes a conversational prompt-completion example (prompt = :func:`build_messages`, completion = the
LLM's response as :func:`render_target` writes it), so the loss falls on the response only. LoRA is a switch:
with it the adapter is saved, without it the whole model. Experiment tracking is the caller's job; this module
only reports the figures through :class:`FinetuneResult` and an optional progress callback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from components.config import StepConfig
from components.schema import CallRecord
from components.slm import build_messages, count_parameters, prepare_model, render_target

# (global step, total steps, training loss of that step)
FinetuneProgress = Callable[[int, int, float], None]


class LoraSettings(StepConfig):
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


class FinetuneConfig(StepConfig):
    curated: str = "data/curated/records.parquet"
    splits: str = "data/splits/splits.parquet"
    leaderboard: str = "reports/leaderboard.json"
    output_dir: str = "models/adapters"
    summary: str = "reports/finetune.json"
    lora: LoraSettings = LoraSettings()
    learning_rate: float = 1.0e-3
    max_steps: int = 24  # -1 trains num_train_epochs instead
    num_train_epochs: float = 1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 384
    gradient_checkpointing: bool = True
    seed: int = 42


@dataclass
class FinetuneResult:
    adapter_dir: str  # the LoRA adapter, or the whole model when LoRA is off
    base_model: str  # the prepared folder the adapter applies to
    steps: int
    train_loss: float  # loss of the last logged step
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    eval_loss: float | None = None  # on eval_records, once after training, when given
    too_long_record_ids: list[str] = field(default_factory=list)  # left out: longer than max_length tokens


def to_training_example(record: CallRecord) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational prompt-completion form."""
    return {
        "prompt": build_messages(record),
        "completion": [{"role": "assistant", "content": render_target(record.response)}],
    }


def split_by_length(records: list[CallRecord], tokenizer: Any, max_length: int) -> tuple[list[CallRecord], list[str]]:
    """The records whose prompt + answer fit in ``max_length`` tokens, and the ids of those that do not.

    TRL would cut a longer example (a truncated answer teaches the model never to finish its call) or drop it
    without a word when the prompt alone fills the window; leaving them out here makes the choice visible.
    """
    fitting, too_long = [], []
    for record in records:
        example = to_training_example(record)
        encoded = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True)
        length = len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        (fitting.append(record) if length <= max_length else too_long.append(record.record_id))
    return fitting, too_long


def _records_dataset(records: list[CallRecord]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([to_training_example(record) for record in records])


def build_trainer(base_folder: str, train_records: list[CallRecord], cfg: FinetuneConfig, output_dir: Path,
                  eval_records: list[CallRecord] | None = None, callbacks: list[Any] | None = None,
                  tokenizer: Any = None) -> Any:
    """The configured SFTTrainer (not yet trained); separate so tests can inspect its tokenized dataset."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(cfg.seed)  # before the model exists: LoRA's A matrices are drawn at wrapping time
    on_cuda = torch.cuda.is_available()
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(base_folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.bfloat16 if on_cuda else torch.float32)
    peft_config = None
    if cfg.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
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
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not on_cuda,
        bf16=on_cuda and torch.cuda.is_bf16_supported(),
        optim="adamw_torch_fused" if on_cuda else "adamw_torch",
        save_strategy="no",  # only the final adapter is kept; checkpoints would cost time and disk
        report_to="none",  # the caller tracks the run
        logging_steps=1,
        disable_tqdm=True,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=_records_dataset(train_records),
        eval_dataset=_records_dataset(eval_records) if eval_records else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def _loss_recorder(history: list[float], progress_callback: FinetuneProgress | None) -> Any:
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            if logs and "loss" in logs:
                history.append(float(logs["loss"]))
                if progress_callback is not None:
                    progress_callback(state.global_step, state.max_steps, float(logs["loss"]))

    return LossRecorder()


def finetune(
    base_reference: str,
    train_records: list[CallRecord],
    cfg: FinetuneConfig,
    output_dir: Path,
    eval_records: list[CallRecord] | None = None,
    progress_callback: FinetuneProgress | None = None,
) -> FinetuneResult:
    """Train on the records and save the adapter (or full model) with its tokenizer into ``output_dir``."""
    if not train_records:
        raise ValueError("no training records: nothing to fine-tune on")
    from transformers import AutoTokenizer

    began = time.perf_counter()
    base_folder = prepare_model(base_reference)
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    train_records, too_long = split_by_length(train_records, tokenizer, cfg.max_length)
    if not train_records:
        raise ValueError(f"all {len(too_long)} training records are longer than max_length={cfg.max_length} tokens")
    history: list[float] = []
    trainer = build_trainer(base_folder, train_records, cfg, output_dir, eval_records,
                            callbacks=[_loss_recorder(history, progress_callback)], tokenizer=tokenizer)
    outcome = trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"] if eval_records else None
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(output_dir))
    trainer.processing_class.save_pretrained(str(output_dir))
    model = trainer.model
    return FinetuneResult(
        adapter_dir=str(output_dir),
        base_model=base_folder,
        steps=int(outcome.global_step),
        train_loss=history[-1] if history else float(outcome.training_loss),
        loss_history=history,
        seconds=time.perf_counter() - began,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_parameters=count_parameters(model),
        eval_loss=float(eval_loss) if eval_loss is not None else None,
        too_long_record_ids=too_long,
    )
