"""What generates for the SLM server: an :class:`Engine` loads and frees (base, adapter) pairs and answers batches.
The default is :class:`PoolEngine`, transformers' eager ``generate`` through the SLM pool; a faster engine (issue 19,
item 2) is one more class with the same four methods, and must keep the tool grammar and per-cluster adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from components.core.schema import CallRecord


@dataclass(frozen=True)
class ServedAdapter:
    base_model: str  # catalog reference or folder of the base SLM
    adapter_dir: str | None = None  # LoRA adapter (or whole fine-tuned model) folder; None: the plain base


class Engine(Protocol):
    """What generates: loads and frees (base, adapter) pairs and answers batches; all calls on one thread."""

    name: str

    def load(self, served: ServedAdapter) -> None: ...

    def unload(self, served: ServedAdapter) -> None: ...

    def generate(self, served: ServedAdapter, records: list[CallRecord], max_new_tokens: int) -> list[Any]: ...

    def describe(self) -> dict[str, Any]: ...


class PoolEngine:
    """transformers' eager ``generate`` through the SLM pool (one base copy, adapters switched per batch)."""

    name = "transformers-eager"

    def __init__(self) -> None:
        from components.serve.adapter_pool import SLMPool

        self.pool = SLMPool()

    def load(self, served: ServedAdapter) -> None:
        self.pool.load(served.base_model, served.adapter_dir)

    def unload(self, served: ServedAdapter) -> None:
        self.pool.unload(served.base_model, served.adapter_dir)

    def generate(self, served: ServedAdapter, records: list[CallRecord], max_new_tokens: int) -> list[Any]:
        return self.pool.generations(served.base_model, served.adapter_dir, records, max_new_tokens)

    def describe(self) -> dict[str, Any]:
        import os
        import platform
        from importlib.metadata import version

        import torch

        from components.slm.grammar import available

        return {
            "engine": self.name,
            "dtype": "float32",
            "device": "cpu",  # components/slm loads onto the CPU
            "torch_threads": torch.get_num_threads(),
            "cpu": _cpu_model() or platform.processor(),
            "cpu_count": os.cpu_count(),
            "constrained_decoding": available(),
            "versions": {package: version(package) for package in ("torch", "transformers", "peft")},
        }


def _cpu_model() -> str | None:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
