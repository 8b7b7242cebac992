"""S5 on a GPU: trained tokens/s and model FLOPs utilisation (MFU) of LoRA SFT, bf16, with and without packing.

    python benchmarks/finetune_gpu.py [--models smollm2-135m smollm2-1.7b] [--steps 20] [--warmup 5]
                                      [--peak-tflops 989] [--attn sdpa|flash_attention_2]

Models are built from their configs with random weights (speed does not depend on the values), and the data is
random token ids with the length spread of tool-call prompts (prompt + completion, loss on the completion only), so
the script needs no download and runs unchanged on any CUDA machine (H100, H200, A100...). It trains with TRL's
SFTTrainer and the settings S5 uses (LoRA r=16 on all linear layers, completion-only loss, fused AdamW) and prints
one table row per model and packing setting. It refuses to run without CUDA.

MFU counts the FLOPs the model needs per trained (non-padding) token: for LoRA, the frozen weights cost a forward
(2N) and the activation gradients (2N) but no weight gradients, so 4N, where N counts every matmul weight including
the LM head, plus attention scores 12 * layers * hidden * mean sequence length; the adapters' own FLOPs are
negligible. Padding is counted as wasted work, which is what packing recovers. Peak bf16 dense throughput is taken
from the device name (H100/H200 SXM 989, H100 PCIe 756, A100 312 TFLOP/s) unless --peak-tflops is given.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

# Llama-architecture configs of the SmolLM2 family (the 1.7B one is the 1-2B case of the issue).
MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "batch": 32,
    },
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "batch": 8,
    },
}
VOCAB = 49152
MAX_LENGTH = 1024
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0)]


def peak_tflops(device_name: str) -> float | None:
    return next((value for key, value in PEAK_TFLOPS if key.lower() in device_name.lower()), None)


def synthetic_calls(count: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Pre-tokenized prompt-completion examples: prompts of 100-700 tokens, completions of 20-120."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, completion = rng.randint(100, 700), rng.randint(20, 120)
        ids = [rng.randrange(16, VOCAB) for _ in range(prompt + completion)]
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * completion})
    return rows


def placeholder_tokenizer() -> Any:
    """A three-token tokenizer built in memory: the data is already token ids, TRL only needs the pad token."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def matmul_parameters(model: Any) -> int:
    """Weights that take part in a matmul per token: every linear layer, the LM head included."""
    import torch

    return sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))


def measure(
    name: str, packing: bool, steps: int, warmup: int, attn: str, peak: float, device: str = "cuda"
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    spec = dict(MODELS[name])
    batch = spec.pop("batch")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=MAX_LENGTH * 2,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **spec,
    )
    config._attn_implementation = attn
    on_cuda = device == "cuda"
    model = LlamaForCausalLM(config).to(dtype=torch.bfloat16 if on_cuda else torch.float32, device=device)
    flops_weights = matmul_parameters(model)
    rows = synthetic_calls(batch * (steps + warmup) * 2)  # packing needs about half as many rows as calls
    mean_length = sum(len(row["input_ids"]) for row in rows) / len(rows)

    timings: dict[str, float] = {}

    def synchronize() -> None:
        if on_cuda:
            torch.cuda.synchronize()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                synchronize()
                timings["start"], timings["tokens_start"] = time.perf_counter(), state.num_input_tokens_seen
            if state.global_step == warmup + steps:
                synchronize()
                timings["end"], timings["tokens_end"] = time.perf_counter(), state.num_input_tokens_seen

    args = SFTConfig(
        output_dir="/tmp/llm2slm-gpu-bench",
        per_device_train_batch_size=batch,
        max_steps=warmup + steps,
        learning_rate=1e-4,
        bf16=on_cuda,
        use_cpu=not on_cuda,
        optim="adamw_torch_fused" if on_cuda else "adamw_torch",
        max_length=MAX_LENGTH,
        packing=packing,
        completion_only_loss=True,
        activation_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        save_strategy="no",
        report_to="none",
        logging_steps=10_000,
        disable_tqdm=True,
        dataloader_num_workers=2 if on_cuda else 0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=placeholder_tokenizer(),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[Clock()],
    )
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = timings["end"] - timings["start"]
    tokens = int(timings["tokens_end"] - timings["tokens_start"])
    layers, hidden = config.num_hidden_layers, config.hidden_size
    flops_per_token = 4 * flops_weights + 12 * layers * hidden * mean_length
    tokens_per_second = tokens / seconds
    return {
        "model": name,
        "packing": packing,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6),
        "batch": batch,
        "tokens_per_s": tokens_per_second,
        "mfu": flops_per_token * tokens_per_second / (peak * 1e12),
        "step_ms": 1000 * seconds / steps,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if on_cuda else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from its name)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (flash_attention_2 if installed)")
    # Checks the code path on CPU with a tiny config; its figures mean nothing.
    parser.add_argument("--smoke-test-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if args.smoke_test_on_cpu:
        MODELS["tiny"] = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "batch": 2,
        }
        for packing in (False, True):
            print(measure("tiny", packing, 2, 1, args.attn, peak=1.0, device="cpu"))
        return

    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks/finetune_gpu.py measures GPU training and needs a CUDA device; none is visible here "
            "(torch.cuda.is_available() is False). For CPU figures run benchmarks/finetune_speed.py."
        )
    device = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(device)
    if peak is None:
        sys.exit(f"unknown peak bf16 throughput for {device!r}: pass --peak-tflops")
    print(f"device: {device}, peak {peak:.0f} TFLOP/s bf16, torch {torch.__version__}, attention {args.attn}")
    print(
        f"{'model':<14} {'packing':<8} {'params M':>8} {'batch':>5} {'tokens/s':>10} {'MFU %':>6} "
        f"{'step ms':>8} {'peak GB':>8}"
    )
    for name in args.models:
        for packing in (False, True):
            row = measure(name, packing, args.steps, args.warmup, args.attn, peak)
            print(
                f"{row['model']:<14} {str(row['packing']):<8} {row['params_m']:>8} {row['batch']:>5} "
                f"{row['tokens_per_s']:>10.0f} {100 * row['mfu']:>6.1f} {row['step_ms']:>8.0f} "
                f"{row['peak_mem_gb']:>8.1f}",
                flush=True,
            )
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
