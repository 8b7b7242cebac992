"""S5's CPU speed levers, applied around TRL's SFTTrainer (measured side by side in benchmarks/finetune_speed.py).

- Answer logits only: TRL's trainer already projects hidden states through the LM head in chunks (its fused head),
  but scores only the positions that carry a label on Triton devices; on a CPU it scores every position (49,152 x
  576 per prompt token for SmolLM2, forward and backward) although the completion-only loss reads just the answer's
  ~30 tokens. :func:`score_answer_positions_only` makes the CPU take the same compact path: identical loss,
  gradients and metrics, a small share of the LM head's work.
- bf16 base weights (LoRA on a CPU with native bf16): the frozen base loads in bf16, so autocast no longer casts
  every fp32 weight to bf16 on each forward; PEFT keeps the adapter in fp32 and so the optimizer's state.
"""

from __future__ import annotations

from typing import Any

_ORIGINAL = "_llm2slm_original"


def score_answer_positions_only(enabled: bool = True) -> bool:
    """Let TRL's fused LM head score only labelled positions on CPU too (``enabled``), or as TRL does (not); True
    when the CPU now takes the compact path.

    TRL scores every position outside CUDA/XPU only so that a compiler on other accelerators (Neuron) sees one tile
    shape per batch; a CPU has no such constraint. TRL decides through its module-level ``_use_triton`` at each
    forward (its kernels keep their own reference, so the CPU still folds tiles with torch ops). Idempotent; where
    this TRL release has no such switch nothing changes (training as before) and it returns False.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or not hasattr(trl_utils, "add_fused_lm_head"):
        return False
    original = getattr(decide, _ORIGINAL, decide)
    if not enabled:
        trl_utils._use_triton = original
        return False

    def compact_on_cpu(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    setattr(compact_on_cpu, _ORIGINAL, original)
    trl_utils._use_triton = compact_on_cpu
    return True


def base_weights_dtype(*, precision: str, on_cuda: bool, lora: bool, bf16_base_weights: bool) -> str:
    """The dtype the frozen base loads in: bf16 on CUDA bf16 (as before) and, when ``bf16_base_weights``, on a CPU
    training LoRA in bf16 (the adapter and the optimizer stay fp32); else fp32 (a full fine-tune keeps fp32
    master weights)."""
    if precision != "bf16":
        return "float32"
    if on_cuda or (lora and bf16_base_weights):
        return "bfloat16"
    return "float32"
