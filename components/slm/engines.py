"""What generates for the SLM server and, with ``evaluate.engine``, for S6: an :class:`Engine` loads and frees (base,
adapter) pairs and answers batches.
The default is :class:`PoolEngine`, transformers' eager ``generate`` through the SLM pool; the faster CPU engine is
components/slm/llama_cpp_engine.py's (same four methods, tool grammar and per-cluster adapters kept), chosen by
:func:`make_engine` from the server's ``engine`` setting (docs/benchmarks.md has the measurement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from components.core.machine import cpu_model
from components.core.schema import CallRecord
from components.slm.generation import GENERATION_ENGINE


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

    name = GENERATION_ENGINE

    def __init__(self) -> None:
        from components.slm.adapter_pool import SLMPool

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
            "cpu": cpu_model() or platform.processor(),
            "cpu_count": os.cpu_count(),
            "constrained_decoding": available(),
            "versions": {package: version(package) for package in ("torch", "transformers", "peft")},
        }


ENGINES = ("transformers", "llama-cpp")


def make_engine(name: str = "transformers", threads: int | None = None) -> Engine:
    """The engine a setting names: ``transformers`` (eager, the fallback, always there) or ``llama-cpp``
    (components/slm/llama_cpp_engine.py; the optional extra, built from source)."""
    if name == "transformers":
        return PoolEngine()
    if name == "llama-cpp":
        from components.slm.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine(n_threads=threads)
    raise ValueError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
