"""reports/router.yaml: what the gate decided, as the router's config (``llm2slm proxy --route reports/router.yaml``).

A promoted cluster is routed ``on`` (its SLM answers, the LLM stays the fallback); every other evaluated cluster is
``shadow``, so live traffic keeps measuring it against the LLM while the LLM answers. Clusters not listed, outliers
and requests that offer a tool the cluster never saw go to the LLM (components/serve/router.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from components.core.schema import CallRecord


def offered_tools(records: Iterable[CallRecord]) -> list[str]:
    """Every tool name offered to the LLM in these calls: what a cluster's SLM has seen in its prompts."""
    names = set()
    for record in records:
        for tool in record.tools or []:
            function = tool.get("function", tool) if isinstance(tool, dict) else {}
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.add(function["name"])
    return sorted(names)


def router_config(
    entries: Sequence[Mapping[str, Any]],
    adapters: Mapping[int, str],
    known_tools: Mapping[int, Sequence[str]],
    cluster_model_dir: str,
) -> dict[str, Any]:
    """The router config for the evaluated clusters (``entries`` of reports/evaluation.json)."""
    clusters = {}
    for entry in entries:
        cluster_id = int(entry["cluster_id"])
        clusters[cluster_id] = {
            "mode": "on" if entry.get("promoted") else "shadow",
            "base_model": entry["base_model"],
            "adapter_dir": adapters.get(cluster_id),
            "known_tools": list(known_tools.get(cluster_id, [])),
        }
    return {"cluster_model_dir": cluster_model_dir, "clusters": clusters}


def write_router_config(config: Mapping[str, Any], path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by S6 evaluate: `on` = promoted at parity, `shadow` = the LLM answers, the SLM is measured.\n"
    path.write_text(header + yaml.safe_dump(dict(config), sort_keys=False))
    return path
