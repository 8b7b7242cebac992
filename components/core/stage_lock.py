"""Per-step "stage locks" in the work directory, so a resumed conversion skips the steps that are up to date.

Like a stage of ``dvc.lock``: after a step succeeds, ``<workdir>/.llm2slm/steps/<step>.json`` records a sha256 of
the step's params, and the digests of the files it read and wrote. A later run (``llm2slm run --resume``) skips
the step when its params and inputs are unchanged and every output is still there, unchanged. A step that reads
something no file digest can vouch for (an MLflow trace source) is never up to date.

Framework-free: the flow decides when to check and when to record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.assets import sha256_of

LOCK_DIR = Path(".llm2slm") / "steps"
LOCK_VERSION = 1


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, or of a folder's files (relative names and contents); None when absent."""
    if path.is_file():
        return sha256_of(path)
    if path.is_dir():
        digest = hashlib.sha256(b"dir\0")
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path).as_posix()}\0{file_digest(child)}\0".encode())
        return digest.hexdigest()
    return None


def params_digest(params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def _key(workdir: Path, path: Path) -> str:
    """A path as the lock names it: relative to the work directory when inside it (a copied work dir stays up
    to date), else absolute."""
    try:
        return path.resolve().relative_to(workdir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def digests(workdir: Path, paths: Iterable[Path]) -> dict[str, str | None]:
    return {_key(workdir, path): file_digest(path) for path in paths}


@dataclass(frozen=True)
class StageLock:
    """What one step is run from (params, inputs) and what it wrote (outputs). ``inputs`` None: not verifiable."""

    step: str
    workdir: Path
    params: Any
    inputs: tuple[Path, ...] | None
    outputs: tuple[Path, ...]

    @property
    def path(self) -> Path:
        return self.workdir / LOCK_DIR / f"{self.step}.json"

    def current(self) -> dict[str, Any] | None:
        """The lock as it would be written now; None when an input cannot be digested."""
        if self.inputs is None:
            return None
        return {
            "version": LOCK_VERSION,
            "step": self.step,
            "params_sha256": params_digest(self.params),
            "inputs": digests(self.workdir, self.inputs),
            "outputs": digests(self.workdir, self.outputs),
        }

    def stored(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def why_stale(self) -> str | None:
        """None when the step is up to date; else the first reason it must run."""
        stored, now = self.stored(), self.current()
        if now is None:
            return "an input has no file to digest"
        if stored is None or stored.get("version") != LOCK_VERSION:
            return "no lock from a finished run"
        if stored.get("params_sha256") != now["params_sha256"]:
            return "params changed"
        if stored.get("inputs") != now["inputs"]:
            changed = sorted(
                k
                for k in set(stored.get("inputs", {})) | set(now["inputs"])
                if stored.get("inputs", {}).get(k) != now["inputs"].get(k)
            )
            return f"input changed: {', '.join(changed)}"
        recorded = stored.get("outputs", {})
        if set(recorded) != set(now["outputs"]):
            return "outputs changed"
        for name, digest in recorded.items():
            if now["outputs"][name] != digest:
                return f"output {'missing' if now['outputs'][name] is None else 'changed'}: {name}"
        return None

    def up_to_date(self) -> bool:
        return self.why_stale() is None

    def record(self) -> Path | None:
        """Write the lock after the step succeeded (atomically); nothing when an input is not verifiable."""
        now = self.current()
        if now is None:
            self.path.unlink(missing_ok=True)
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps(now, indent=1, sort_keys=True))
        partial.replace(self.path)
        return self.path

    def invalidate(self) -> None:
        """Forget the lock (before the step runs: a step killed half-way must not look finished)."""
        self.path.unlink(missing_ok=True)
