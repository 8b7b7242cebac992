"""Reader for the logging proxy's store: ``DIR/calls-YYYYMMDD.jsonl``, one Fernet token per line (see
components/core/secure_store.py), each decrypting to a request/response line. Resumes per file from its watermark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.collect.config import CollectConfig
from components.collect.sources.common import SourceBatch, SourceError, iter_lines
from components.collect.sources.openai_jsonl import read_jsonl_files, stored_line_limit
from components.core.secure_store import check_key_opens, fernet

STORE_GLOB = "calls-*.jsonl"


def check_store_key(directory: Path, cfg: CollectConfig) -> list[Path]:
    """The store's files, after checking that the key opens the store as a whole: a wrong key is one clear
    StoreKeyError. The check reads lines (from the first file on) only until one decrypts, so an unreadable line,
    even a file's first, is left to the reader, which quarantines it with its reason."""
    paths = sorted(directory.glob(STORE_GLOB))
    limit = stored_line_limit(cfg, encrypted=True)
    lines = (raw.data for path in paths for raw in iter_lines(path, max_line_bytes=limit) if raw.data)
    try:
        check_key_opens(lines, f"the proxy store {directory}")
    finally:
        lines.close()  # the check stops at the first line that opens: close the file it was reading
    return paths


def read_proxy_store(directory: Path, cfg: CollectConfig, source: str, watermark: dict[str, Any]) -> SourceBatch:
    if not directory.is_dir():
        raise SourceError(f"proxy store not found: {directory} is not a directory")
    paths = check_store_key(directory, cfg)
    box = fernet()

    def decode(line: bytes) -> bytes | None:
        try:
            return box.decrypt(line.strip())
        except Exception:  # noqa: BLE001 - cryptography's InvalidToken, or a torn line that is not base64
            return None

    return read_jsonl_files(paths, cfg, source, watermark, decode=decode, source_name="proxy")
