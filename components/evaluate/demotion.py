"""Demotion: a served cluster whose audited calls fall below the gate's parity goes back to ``shadow``.

The router (components/serve/audit.py) sends a share of the calls an ``on`` or ``selective`` SLM keeps to the LLM as
well and scores the pair. Once a cluster has ``min_test_calls`` audited calls and their accuracy is below ``parity``
× the LLM (the LLM's answer is the reference, so the LLM scores 1.0), it fails the gate's own rule
(:func:`components.evaluate.promotion.served_at_parity`) and is demoted. The decision is one line of the promotions
log (``refresh.promotions_log``, JSON lines, the file the refresh writes its promotions to) with the figures; the
registry alias is moved by the task layer (tasks/refresh.py :func:`apply_demotions_task`), since the router lives
below MLflow: :func:`pending_demotions` says which demotions it has not applied yet.

Framework-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.evaluate.promotion import PromotionPolicy, served_at_parity
from components.evaluate.selective import wilson_interval

DEMOTION = "demotion"  # the promotions log's ``event`` of a router's demotion
ALIAS_MOVED = "demotion_applied"  # ... and of the task that moved the registry alias after it
LLM_REFERENCE = 1.0  # the LLM's answer is the reference: it scores 1.0 against itself


@dataclass(frozen=True)
class AuditedFigures:
    """A cluster's audited calls since it was last routed: how many, and how many the SLM got right."""

    calls: int
    hits: int

    @property
    def accuracy(self) -> float | None:
        return self.hits / self.calls if self.calls else None

    @property
    def interval(self) -> list[float] | None:
        return wilson_interval(self.hits, self.calls)


def audited_by_cluster(records: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per cluster (the router's id), the audited calls among ``records`` (CallRecords whose ``metadata.route.audit``
    is ``match`` or ``miss``): how many, how many the SLM got right, the accuracy and its 95 % interval."""
    tallies: dict[int, list[int]] = {}
    for record in records:
        route = (record.metadata or {}).get("route")
        if isinstance(route, dict) and route.get("audit") in ("match", "miss") and route.get("cluster_id") is not None:
            tally = tallies.setdefault(int(route["cluster_id"]), [0, 0])
            tally[0] += 1
            tally[1] += route["audit"] == "match"
    return {str(cluster_id): figures_of(AuditedFigures(*tally)) for cluster_id, tally in sorted(tallies.items())}


def figures_of(audited: AuditedFigures) -> dict[str, Any]:
    return {
        "audited_calls": audited.calls,
        "audited_hits": audited.hits,
        "audited_accuracy": audited.accuracy,
        "audited_interval": audited.interval,
    }


def demotion_reason(audited: AuditedFigures, policy: PromotionPolicy) -> str | None:
    """Why the cluster must be demoted (the gate's rule failed on enough audited calls, with the figures), or None
    while it holds parity or has too few audited calls to say."""
    checks = served_at_parity(audited.accuracy, audited.calls, LLM_REFERENCE, policy)
    if not checks["enough_accepted_calls"] or checks["accepted_parity"]:
        return None
    low, high = audited.interval or [0.0, 0.0]
    return (
        f"audited accuracy {audited.accuracy:.3f} (95 % CI {low:.3f}-{high:.3f}) on {audited.calls} audited calls "
        f"< {policy.parity:.2f} × LLM {LLM_REFERENCE:.3f} = {policy.parity * LLM_REFERENCE:.3f}"
    )


def demotion_line(
    cluster_id: int, from_mode: str, audited: AuditedFigures, reason: str, moment: datetime | None = None
) -> dict[str, Any]:
    """The promotions log's line of one demotion (no prompt text: figures only)."""
    return {
        "event": DEMOTION,
        "timestamp": (moment or datetime.now(UTC)).isoformat(),
        "cluster_id": int(cluster_id),
        "from_mode": from_mode,
        "to_mode": "shadow",
        **figures_of(audited),
        "promoted": False,
        "reason": f"demoted to shadow: {reason}",
    }


def read_log(path: Path) -> list[dict[str, Any]]:
    """The promotions log's lines (an absent log is empty; a line that is not JSON is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


def pending_demotions(lines: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The router's demotions whose registry alias no task has moved yet (a demotion is applied once: the line
    the task writes after it names the demotion's timestamp)."""
    rows = list(lines)
    applied = {
        (row.get("cluster_id"), row.get("demotion_timestamp")) for row in rows if row.get("event") == ALIAS_MOVED
    }
    return [
        dict(row)
        for row in rows
        if row.get("event") == DEMOTION and (row.get("cluster_id"), row.get("timestamp")) not in applied
    ]


def demoted_since(lines: Iterable[Mapping[str, Any]], moment: datetime | None) -> list[int]:
    """The clusters the router demoted after ``moment`` (when its config was written), so a restarted router keeps
    them in shadow until a new config is written; none without a moment (a hand-written config: a logged demotion
    may predate it)."""
    if moment is None:
        return []
    found = []
    for row in lines:
        if row.get("event") != DEMOTION:
            continue
        try:
            logged = datetime.fromisoformat(str(row["timestamp"]))
        except (KeyError, ValueError):
            continue
        if logged > moment:
            found.append(int(row["cluster_id"]))
    return sorted(set(found))


def demotions_by_cluster(lines: Iterable[Mapping[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Each cluster's demotions, oldest first (what the route and refresh reports show)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for row in lines:
        if row.get("event") == DEMOTION:
            found.setdefault(int(row["cluster_id"]), []).append(dict(row))
    return found
