"""The logging proxy's store: one encrypted, append-only file per UTC day (components/core/secure_store.py), and
what a line holds of a failed upstream call or of a call under ``--anonymize`` (components/serve/proxy.py)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from components.collect.sources.common import request_record
from components.core.schema import CallRecord
from components.core.secure_store import EncryptedAppendLog

logger = logging.getLogger(__name__)
# An upstream's OpenAI error type ("rate_limit_error", "invalid_request_error"): kept; anything else is free text.
_ERROR_TYPE = re.compile(r"^[a-z_]{1,64}$")


class CallStore:
    """The proxy's encrypted, append-only store: one file per UTC day."""

    def __init__(self, store_dir: Path, key: bytes | None = None) -> None:
        self.store_dir = Path(store_dir)
        self._log = EncryptedAppendLog(self.store_dir, key=key)

    def append(self, call: dict[str, Any], moment: datetime) -> Path:
        return self._log.append(f"calls-{moment:%Y%m%d}.jsonl", json.dumps(call, ensure_ascii=False).encode())


def upstream_failure(status: int, body: bytes) -> dict[str, Any]:
    """What the store keeps of an upstream error: its status and OpenAI error type, never its body (upstreams
    echo the prompt in their error messages)."""
    error_type = None
    try:
        error = json.loads(body).get("error")
        candidate = error.get("type") if isinstance(error, dict) else None
        if isinstance(candidate, str) and _ERROR_TYPE.match(candidate):
            error_type = candidate
    except (ValueError, AttributeError):
        pass
    return {"status": status, "type": error_type}


def anonymized_on_write(
    call: dict[str, Any], parsed: CallRecord | None, on_write: Callable[[CallRecord], CallRecord]
) -> dict[str, Any]:
    """The store line of a call under ``--anonymize``: the anonymized record; for a failed upstream call its
    request anonymized the same way beside its status. When the anonymizer fails, a quarantine line with the
    reason (the error type only: its message may quote the text) instead of the call: no raw prompt is written."""
    kept = {key: call[key] for key in ("id", "timestamp") if key in call}
    try:
        if parsed is not None:
            return {"record": on_write(parsed).model_dump(mode="json")}
        request = request_record(call.get("request") or {}, call.get("agent"), str(call.get("id") or ""), "proxy")
        return {**kept, "error": call.get("error"), "request_record": on_write(request).model_dump(mode="json")}
    except Exception as error:  # noqa: BLE001 - whatever the analyzer raised, the call must not be stored raw
        logger.warning("proxy: call %s could not be anonymized (%s): quarantined", call.get("id"), type(error).__name__)
        return {**kept, "quarantined": f"anonymization failed: {type(error).__name__}"}
