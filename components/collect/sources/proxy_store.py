"""Reader for the logging proxy's store: ``DIR/calls-YYYYMMDD.jsonl``, one Fernet token per line (see
components/core/secure_store.py), each decrypting to a request/response line. Resumes per file from its watermark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.collect.config import CollectConfig
from components.collect.sources.common import SourceBatch, SourceError
from components.collect.sources.openai_jsonl import read_jsonl_files
from components.core.secure_store import decrypt_lines, fernet

STORE_GLOB = "calls-*.jsonl"


def check_store_key(directory: Path) -> list[Path]:
    """The store's files, after checking that the key decrypts the first line of each (a wrong key must be one
    clear StoreKeyError, not a quarantine entry per line)."""
    paths = sorted(directory.glob(STORE_GLOB))
    for path in paths:
        with path.open("rb") as handle:
            first = next((line for line in handle if line.strip()), None)
        if first is not None:
            list(decrypt_lines(iter([first]), str(path)))
    return paths


def read_proxy_store(directory: Path, cfg: CollectConfig, source: str, watermark: dict[str, Any]) -> SourceBatch:
    if not directory.is_dir():
        raise SourceError(f"proxy store not found: {directory} is not a directory")
    paths = check_store_key(directory)
    box = fernet()

    def decode(line: bytes) -> bytes | None:
        try:
            return box.decrypt(line.strip())
        except Exception:  # noqa: BLE001 - cryptography's InvalidToken, or a torn line that is not base64
            return None

    return read_jsonl_files(paths, cfg, source, watermark, decode=decode, source_name="proxy")
