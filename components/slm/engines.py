"""What generates for the SLM server and S6 (``evaluate.engine``): an :class:`Engine` loads and frees (base, adapter)
pairs and answers batches, chosen by :func:`make_engine` from the ``engine`` setting.

The default is ONNX Runtime GenAI (components/slm/onnx_engine.py, installed from wheels: tool grammar at every
token, per-token log-probabilities, the same answers as eager), with :class:`PoolEngine`, transformers' eager
``generate`` through the SLM pool, as its fallback for what it cannot load (:class:`WithFallback`, a warning says
why). llama.cpp (components/slm/llama_cpp_engine.py) is the optional compiled extra. docs/benchmarks.md has the
measurement.
"""

from __future__ import annotations

import logging
from typing import Any

from components.core.machine import cpu_model
from components.core.schema import CallRecord
from components.slm.engine_protocol import Engine, ServedAdapter
from components.slm.generation import GENERATION_ENGINE

__all__ = ["ENGINES", "DEFAULT_ENGINE", "Engine", "PoolEngine", "ServedAdapter", "WithFallback", "make_engine"]

logger = logging.getLogger(__name__)


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


class WithFallback:
    """An engine that hands what it cannot load (a model its converter refuses, a missing runtime) to transformers
    eager, with a warning naming the model and why; :attr:`name` says which engines answered."""

    def __init__(self, primary: Engine | None, why_not: str | None = None) -> None:
        self.primary, self.fallback = primary, None
        self.fell_back: dict[ServedAdapter, str] = {}
        if primary is None:
            logger.warning("SLM engine unavailable (%s): transformers eager answers instead", why_not)

    @property
    def name(self) -> str:
        if self.primary is None:
            return PoolEngine.name
        return f"{self.primary.name}+{PoolEngine.name}" if self.fell_back else self.primary.name

    def _eager(self) -> PoolEngine:
        if self.fallback is None:
            self.fallback = PoolEngine()
        return self.fallback

    def _engine_for(self, served: ServedAdapter) -> Engine:
        if self.primary is None:
            return self._eager()
        return self._eager() if served in self.fell_back else self.primary

    def load(self, served: ServedAdapter) -> None:
        if self.primary is not None and served not in self.fell_back:
            try:
                self.primary.load(served)
                return
            except Exception as error:  # noqa: BLE001  (any failure to load falls back, and says so)
                self.fell_back[served] = f"{type(error).__name__}: {str(error)[-300:]}"
                logger.warning(
                    "%s cannot load %s (%s): transformers eager answers for it",
                    self.primary.name,
                    served.adapter_dir or served.base_model,
                    self.fell_back[served],
                )
        self._eager().load(served)

    def unload(self, served: ServedAdapter) -> None:
        self._engine_for(served).unload(served)

    def generate(self, served: ServedAdapter, records: list[CallRecord], max_new_tokens: int) -> list[Any]:
        self.load(served)  # the primary loads once; a failure moves the model to eager first
        return self._engine_for(served).generate(served, records, max_new_tokens)

    def describe(self) -> dict[str, Any]:
        described = (self.primary or self._eager()).describe()
        if self.fell_back:
            described["fallback"] = {
                "engine": PoolEngine.name,
                "models": {str(s.adapter_dir or s.base_model): why for s, why in self.fell_back.items()},
            }
        return described


DEFAULT_ENGINE = "onnxruntime-genai"
ENGINES = ("onnxruntime-genai", "transformers", "llama-cpp")


def make_engine(name: str = DEFAULT_ENGINE, threads: int | None = None) -> Engine:
    """The engine a setting names: ``onnxruntime-genai`` (the default, from wheels; eager answers what it cannot
    load), ``transformers`` (eager, always there) or ``llama-cpp`` (components/slm/llama_cpp_engine.py; the
    optional extra, built from source). ``threads``: the engine's CPU threads (None: one per core)."""
    if name == "transformers":
        return PoolEngine()
    if name == "onnxruntime-genai":
        from components.slm.onnx_engine import OnnxGenaiEngine, available

        why_not = available()
        return WithFallback(None if why_not else OnnxGenaiEngine(threads=threads), why_not)
    if name == "llama-cpp":
        from components.slm.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine(n_threads=threads)
    raise ValueError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
