"""Serving many clusters' SLMs with as few weights in memory as possible.

Clusters fine-tuned from the same base model share one copy of it: each cluster's LoRA adapter is loaded onto that
base under its own name (PEFT's ``load_adapter``) and switched on for the batch it answers (``set_adapter``); a
cluster served by the plain base runs with the adapters disabled. A folder holding a whole model (full fine-tune or
merged adapter) is loaded on its own. Each adapter's prompt spec (prompt pruning) is applied with it, so a cluster
is prompted the way it was trained.

Not thread-safe on purpose: the router calls it from its single SLM worker thread, and switching adapters between
two concurrent generations on one model would mix them up.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core.schema import CallRecord


@dataclass
class _LoadedBase:
    model: Any
    tokenizer: Any
    base_spec: Any  # the base folder's prompt spec (usually none)
    # resolved adapter folder -> (its adapter name on the model, its prompt spec)
    adapters: dict[str, tuple[str, Any]] = field(default_factory=dict)
    names_given: int = 0  # adapter names are never reused: an unloaded adapter's name may linger in PEFT's state


def _is_lora_adapter(folder: str | Path | None) -> bool:
    return folder is not None and (Path(folder) / "adapter_config.json").exists()


class SLMPool:
    """Generates for (base model, adapter) pairs, loading each base once and each adapter once onto it."""

    def __init__(self) -> None:
        self._bases: dict[str, _LoadedBase] = {}
        self._whole_models: dict[str, tuple[Any, Any]] = {}

    @property
    def loaded(self) -> dict[str, list[str]]:
        """Base reference -> the adapter folders loaded onto it, plus each whole model's folder: what is in memory."""
        shown = {reference: sorted(base.adapters) for reference, base in self._bases.items()}
        return {**shown, **{folder: [] for folder in self._whole_models}}

    def _base(self, reference: str) -> _LoadedBase:
        from components import slm

        if reference not in self._bases:
            model, tokenizer = slm.load_model(reference)
            self._bases[reference] = _LoadedBase(model, tokenizer, getattr(model, slm.PROMPT_SPEC_ATTRIBUTE, None))
        return self._bases[reference]

    def _with_adapter(self, base: _LoadedBase, adapter_dir: str) -> tuple[str, Any]:
        """The adapter's name on the base model and its prompt spec, loading it on first use."""
        from peft import PeftModel

        from components.slm.prompt_pruning import load_prompt_spec

        folder = str(Path(adapter_dir).resolve())
        if folder not in base.adapters:
            name = f"cluster_adapter_{base.names_given}"
            base.names_given += 1
            if isinstance(base.model, PeftModel):
                base.model.load_adapter(folder, adapter_name=name)
            else:
                base.model = PeftModel.from_pretrained(base.model, folder, adapter_name=name)
                base.model.eval()
            base.adapters[folder] = (name, load_prompt_spec(folder))
        return base.adapters[folder]

    def load(self, base_model: str, adapter_dir: str | None) -> None:
        """Loads the pair now (what the first generation would do), so that a hot reload pays it before serving."""
        if adapter_dir is not None and not _is_lora_adapter(adapter_dir):
            self._whole(base_model, adapter_dir)
        else:
            base = self._base(base_model)
            if adapter_dir is not None:
                self._with_adapter(base, adapter_dir)

    def unload(self, base_model: str, adapter_dir: str | None) -> bool:
        """Frees an adapter (or whole model) no cluster serves any more; True when something was freed. The last
        adapter on a base stays: PEFT's model is not meant to run with none, and one LoRA is small."""
        if adapter_dir is None:
            return False
        if adapter_dir in self._whole_models:
            del self._whole_models[adapter_dir]
            return True
        base = self._bases.get(base_model)
        folder = str(Path(adapter_dir).resolve())
        if base is None or folder not in base.adapters or len(base.adapters) < 2:
            return False
        name, _ = base.adapters.pop(folder)
        base.model.delete_adapter(name)
        return True

    def _whole(self, base_model: str, adapter_dir: str) -> tuple[Any, Any]:
        from components import slm

        if adapter_dir not in self._whole_models:
            self._whole_models[adapter_dir] = slm.load_model(base_model, adapter_dir)
        return self._whole_models[adapter_dir]

    def generate(
        self, base_model: str, adapter_dir: str | None, records: list[CallRecord], max_new_tokens: int
    ) -> list[str]:
        """Greedy completions of ``records`` (one batch) by ``base_model`` with ``adapter_dir`` on top."""
        return [generation.text for generation in self.generations(base_model, adapter_dir, records, max_new_tokens)]

    def generations(
        self, base_model: str, adapter_dir: str | None, records: list[CallRecord], max_new_tokens: int
    ) -> list[Any]:
        """As :meth:`generate`, with each completion's token counts and latency (components.slm.Generation)."""
        from components import slm

        if adapter_dir is not None and not _is_lora_adapter(adapter_dir):
            model, tokenizer = self._whole(base_model, adapter_dir)
            context: Any = nullcontext()
        else:
            base = self._base(base_model)
            model, tokenizer = base.model, base.tokenizer
            if adapter_dir is None:
                spec = base.base_spec
                # Adapters already on this base must not answer for a cluster served by the plain base.
                context = model.disable_adapter() if base.adapters else nullcontext()
            else:
                name, spec = self._with_adapter(base, adapter_dir)
                model = base.model
                model.set_adapter(name)
                context = nullcontext()
            setattr(model, slm.PROMPT_SPEC_ATTRIBUTE, spec)
        with context:
            return slm.generate(
                model, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=max(len(records), 1)
            )
