"""What every engine of components/slm shares: the (base, adapter) pair it serves and the four methods it answers
with. Its own module, so the engines (components/slm/engines.py, llama_cpp_engine.py, onnx_engine.py) import it and
not each other."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
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


def folder_key(folder: str | Path) -> str:
    """A short key of a model or adapter folder and its files' latest change, naming what an engine converted from
    it (a retrained adapter in the same folder gets a new conversion)."""
    path = Path(folder).resolve()
    stamp = max((p.stat().st_mtime_ns for p in path.iterdir() if p.is_file()), default=0)
    return hashlib.sha256(f"{path}:{stamp}".encode()).hexdigest()[:16]
