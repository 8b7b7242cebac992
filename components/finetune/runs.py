"""The bookkeeping around one S5 training run: device choice, validation split, data version, fingerprint,
checkpoints to resume from, and the finished-run marker that lets an identical run be skipped.

Kept apart from components/finetune/train.py so the trainer set-up stays readable; framework-free like every component.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.schema import CallRecord

FINGERPRINT_FILE = "fingerprint.json"
RESULT_FILE = "training_result.json"
# Bumped when the way examples are built changes, so old adapters are not taken for current ones.
EXAMPLE_FORMAT_VERSION = 2


class UnsupportedDeviceError(RuntimeError):
    """The configuration asks for hardware this machine lacks (QLoRA or CUDA without a GPU): not retried."""


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    dtype_name: str  # the weights as loaded: "bfloat16" or "float32"
    precision: str = "fp32"  # the trainer's compute: "bf16" (mixed precision, autocast on CPU) or "fp32"

    @property
    def on_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)


# CPU flags (as /proc/cpuinfo spells them) of native bf16 matrix instructions: AVX-512 BF16 (AMD Zen 4+, Intel
# Cooper Lake+) and AMX (Intel Sapphire Rapids+). Without them bf16 on CPU is emulated, and slower than fp32.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's feature flags (the first ``flags`` line of /proc/cpuinfo; empty where there is none, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve_precision(requested: str, *, on_cuda: bool, cuda_bf16: bool, flags: set[str] | frozenset[str]) -> str:
    """``finetune.precision`` as trained: "bf16" or "fp32".

    ``auto`` is bf16 on a CUDA GPU with bf16 support and on a CPU whose ``flags`` include a native bf16 instruction
    (:data:`CPU_BF16_FLAGS`), else fp32. An explicit choice is kept, except bf16 on a GPU without it (an error).
    """
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"finetune.precision must be auto, bf16 or fp32, not {requested!r}")
    if requested == "bf16" and on_cuda and not cuda_bf16:
        raise UnsupportedDeviceError("finetune.precision is 'bf16' but this GPU does not support bfloat16")
    if requested != "auto":
        return requested
    supported = cuda_bf16 if on_cuda else bool(CPU_BF16_FLAGS & set(flags))
    return "bf16" if supported else "fp32"


def detect_device(
    requested: str = "auto",
    quantization: str = "none",
    lora_enabled: bool = True,
    *,
    precision: str = "auto",
    cuda_available: bool | None = None,
    bf16_supported: bool | None = None,
    flags: set[str] | frozenset[str] | None = None,
) -> Device:
    """CUDA when present (``auto``), else CPU; bf16 or fp32 per :func:`resolve_precision`; QLoRA only on CUDA with
    bitsandbytes. On CUDA bf16 the weights load in bf16; on CPU fp32 here, and the trainer autocasts to bf16
    (train.training_device loads a LoRA base in bf16 too, with finetune.bf16_base_weights).

    ``cuda_available``, ``bf16_supported`` and ``flags`` (the CPU's) default to asking torch and /proc/cpuinfo;
    passing them lets a test check every choice on any machine.
    """
    import torch

    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "cuda" and not cuda:
        raise UnsupportedDeviceError("finetune.device is 'cuda' but no CUDA GPU is visible on this machine")
    use_cuda = cuda and requested != "cpu"
    if quantization == "4bit":
        if not use_cuda:
            raise UnsupportedDeviceError(
                "QLoRA (finetune.quantization: 4bit) needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine "
                "has none: set finetune.quantization to 'none', or run the step on a GPU worker"
            )
        if not lora_enabled:
            raise ValueError("QLoRA trains a LoRA adapter over frozen 4-bit weights: set finetune.lora.enabled")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise UnsupportedDeviceError("QLoRA needs the bitsandbytes package on the GPU worker") from error
    if not use_cuda:
        chosen = resolve_precision(
            precision, on_cuda=False, cuda_bf16=False, flags=cpu_flags() if flags is None else flags
        )
        return Device("cpu", "float32", chosen)
    bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
    chosen = resolve_precision(precision, on_cuda=True, cuda_bf16=bf16, flags=frozenset())
    return Device("cuda", "bfloat16" if chosen == "bf16" else "float32", chosen)


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch``/torchrun (DDP, FSDP), and any single process."""
    return int(os.environ.get("RANK", "0")) == 0


def split_validation(
    records: list[CallRecord], fraction: float, min_validation: int, min_records: int, seed: int
) -> tuple[list[CallRecord], list[CallRecord]]:
    """(train, validation): a seeded share of the calls held out for early stopping.

    A cluster smaller than ``min_records`` keeps every call for training (no validation, no early stopping):
    a handful of held-out calls gives a loss too noisy to stop on, and costs the model a large share of its data.
    """
    if fraction <= 0 or len(records) < min_records:
        return list(records), []
    size = min(len(records) - 1, max(min_validation, round(fraction * len(records))))
    held_out = set(random.Random(seed).sample(sorted(r.record_id for r in records), size))
    return ([r for r in records if r.record_id not in held_out], [r for r in records if r.record_id in held_out])


def records_sha256(records: list[CallRecord]) -> str:
    """Content hash of a list of calls, order included (the order seeds the data loader's shuffle)."""
    digest = hashlib.sha256()
    for record in records:
        # Metadata (e.g. the route a call took) is not trained on: it must not change the data's identity.
        digest.update(record.model_dump_json(exclude={"metadata"}).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def dvc_md5s(workdir: Path, paths: list[str]) -> dict[str, str]:
    """The md5 that ``dvc.lock`` records for each of ``paths`` as a stage output, when the lock lists it and the
    file still has that content (a stale lock says nothing about the data at hand)."""
    lock = workdir / "dvc.lock"
    if not lock.exists():
        return {}
    import yaml

    recorded: dict[str, str] = {}
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []) or []:
            if out.get("path") in paths and out.get("md5"):
                recorded[out["path"]] = out["md5"]
    return {path: md5 for path, md5 in recorded.items() if _file_md5(workdir / path) == md5}


def _file_md5(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(
    base_folder: str, train: list[CallRecord], validation: list[CallRecord], training_settings: dict[str, Any]
) -> str:
    """What decides a run's outcome: base model, data, settings, and the versions of the training libraries."""
    from importlib.metadata import version

    base_config = Path(base_folder) / "config.json"
    payload = {
        "format": EXAMPLE_FORMAT_VERSION,
        "base": base_folder,
        "base_config": hashlib.sha256(base_config.read_bytes()).hexdigest() if base_config.exists() else None,
        "train": records_sha256(train),
        "validation": records_sha256(validation),
        "settings": training_settings,
        "libraries": {name: version(name) for name in ("torch", "transformers", "trl", "peft")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def finished_result(output_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The stored result of a finished run with this fingerprint, or None (never run, or something changed)."""
    marker, result = output_dir / FINGERPRINT_FILE, output_dir / RESULT_FILE
    if not (marker.exists() and result.exists()):
        return None
    if json.loads(marker.read_text()).get("fingerprint") != fingerprint:
        return None
    return json.loads(result.read_text())


def mark_finished(output_dir: Path, fingerprint: str, result: dict[str, Any]) -> None:
    """Written last: an interrupted save never looks finished."""
    (output_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    (output_dir / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": fingerprint}))


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The highest-step ``checkpoint-N`` whose trainer state was written; one a kill interrupted mid-save (no
    ``trainer_state.json``) is removed, since resuming from it fails and transformers' own pick would take it."""
    saved = [path for path in checkpoint_dir.glob("checkpoint-*") if path.name.split("-")[-1].isdigit()]
    complete = [path for path in saved if (path / "trainer_state.json").exists()]
    for path in set(saved) - set(complete):
        shutil.rmtree(path, ignore_errors=True)
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1]))) if complete else None


def prepare_checkpoints(checkpoint_dir: Path, fingerprint: str) -> str | None:
    """The last complete checkpoint of an interrupted run with the same fingerprint, to resume from; checkpoints
    of any other run are removed (they would resume the wrong data or settings)."""
    marker = checkpoint_dir / FINGERPRINT_FILE
    if checkpoint_dir.exists():
        same_run = marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint
        if same_run:
            return last_complete_checkpoint(checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return None
