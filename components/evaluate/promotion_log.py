"""reports/promotions.jsonl: one JSON line per change of a cluster's champion or route (a gate decision of a refresh,
a rollback, a router's demotion and its alias moved back), appended across runs, so the history of who served each
cluster, and why, survives the registry. :func:`append_promotion_events` is the one writer."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def append_promotion_events(path: Path, events: Iterable[Mapping[str, Any]]) -> Path:
    """Append each event as one line (the folder made if needed) and return the log's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for event in events:
            handle.write(json.dumps(dict(event)) + "\n")
    return path


def rollback_event(cluster_id: int, name: str, from_version: str, version: str) -> dict[str, Any]:
    """The line of a rollback: ``champion`` moved from ``from_version`` back to ``version``, now."""
    return {
        "event": "rollback",
        "cluster_id": cluster_id,
        "name": name,
        "from_version": from_version,
        "version": version,
        "alias": "champion",
        "at": datetime.now(UTC).isoformat(),
    }
