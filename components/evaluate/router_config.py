"""reports/router.yaml: what the gate decided, as the router's config (``llm2slm proxy --route reports/router.yaml``).

A promoted cluster is routed ``on`` (its SLM answers, the LLM stays the fallback); a cluster at selective parity is
``selective``, with its calibrator and threshold (a small JSON beside the adapter: feature names, coefficients,
intercept, threshold) so a router answers with the SLM only the calls it is sure of; every other evaluated cluster is
``shadow``, so live traffic keeps measuring it against the LLM while the LLM answers. Clusters not listed, outliers
and requests that offer a tool the cluster never saw go to the LLM (components/serve/router.py).

The router audits the calls an ``on`` or ``selective`` SLM keeps (``audit_share`` of them, at least
``audit_min_per_day`` per cluster and day: components/serve/audit.py) and demotes a cluster whose audited calls fail
the gate's rule (``demotion``: the gate's ``parity`` and ``min_test_calls``) to ``shadow``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from components.core.router_file import ClusterServing, ParityRule, RouterFile
from components.core.schema import CallRecord

# The audit stream's defaults written into router.yaml: 5 % of the kept calls, at least 20 per cluster and day (the
# gate's min_test_calls), so a demotion can be decided within a day even on a quiet cluster.
AUDIT_SHARE = 0.05
AUDIT_MIN_PER_DAY = 20


def offered_tools(records: Iterable[CallRecord]) -> list[str]:
    """Every tool name offered to the LLM in these calls: what a cluster's SLM has seen in its prompts."""
    names = set()
    for record in records:
        names |= {name for name in record.tool_names if name}
    return sorted(names)


def route_mode(entry: Mapping[str, Any]) -> str:
    """The gate's decision as a router mode: ``on``, ``selective`` or ``shadow``."""
    if entry.get("promoted"):
        return "on"
    return "selective" if entry.get("mode") == "selective" and entry.get("selective") else "shadow"


def selective_gate(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What a router needs to apply a selective cluster's gate to one answer: P(match) = sigmoid(features ·
    coefficients + intercept) over the answer's confidence features (components/slm/confidence.py), the SLM's
    answer kept when P ≥ threshold."""
    figures = entry["selective"]
    return {
        **figures["calibrator"],
        "threshold": figures["threshold"],
        "target": figures.get("target"),
        "coverage": figures.get("coverage"),
    }


def write_selective_gate(entry: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(selective_gate(entry), indent=2) + "\n")
    return path


def router_config(
    entries: Sequence[Mapping[str, Any]],
    adapters: Mapping[int, str],
    known_tools: Mapping[int, Sequence[str]],
    cluster_model_dir: str,
    calibrators: Mapping[int, str] | None = None,
    policy: Any = None,
    promotions_log: str | None = None,
) -> RouterFile:
    """The router config for the evaluated clusters (``entries`` of reports/evaluation.json); ``calibrators``: the
    selective clusters' gate files (:func:`write_selective_gate`); ``policy``: the gate's (a ``PromotionPolicy``),
    whose parity rule the router's demotion applies to the audited calls; ``promotions_log``: where the router logs
    a demotion (the refresh reads it there)."""
    clusters = {}
    for entry in entries:
        cluster_id = int(entry["cluster_id"])
        mode = route_mode(entry)
        serving = {
            "mode": mode,
            "base_model": entry["base_model"],
            "adapter_dir": adapters.get(cluster_id),
            "known_tools": list(known_tools.get(cluster_id, [])),
        }
        if mode == "selective":
            serving |= {"threshold": entry["selective"]["threshold"], "calibrator": (calibrators or {}).get(cluster_id)}
        clusters[cluster_id] = ClusterServing(**serving)
    extra: dict[str, Any] = {}
    if policy is not None:
        extra["demotion"] = ParityRule(parity=policy.parity, min_test_calls=policy.min_test_calls)
    if promotions_log is not None:
        extra["promotions_log"] = promotions_log
    return RouterFile(
        cluster_model_dir=cluster_model_dir,
        clusters=clusters,
        # A demotion logged after this moment still holds when a router (re)starts on this file (components/serve).
        written_at=datetime.now(UTC),
        audit_share=AUDIT_SHARE,
        audit_min_per_day=AUDIT_MIN_PER_DAY,
        **extra,
    )


def write_router_config(config: RouterFile, path: Path) -> Path:
    """The file, with the keys S6 set only (the router's own settings keep their defaults until a user sets them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Written by S6 evaluate: `on` = promoted at parity, `selective` = the SLM answers the calls its calibrated\n"
        "# confidence clears `threshold` (gate in `calibrator`), `shadow` = the LLM answers, the SLM is measured.\n"
    )
    path.write_text(header + yaml.safe_dump(config.model_dump(exclude_unset=True), sort_keys=False))
    return path
