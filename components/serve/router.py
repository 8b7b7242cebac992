"""S6 router: per-call decision between a cluster's SLM and the LLM, and the tool-call guardrail.

Pure logic, framework-free. A call goes to the SLM only when its cluster has an SLM, the cluster's mode allows it
(``on``; ``canary`` for a seeded share of calls) and every tool the request offers is known to the cluster.
Outliers (cluster ``-1``) and unknown tools always go to the LLM. ``shadow`` lets the LLM answer while the SLM runs
too, so agreement can be measured. ``selective`` (S6's selective parity) sends the call to the SLM first: its answer
is kept only when its calibrated confidence clears the cluster's threshold (components/slm/confidence.py
:class:`SelectiveGate`, applied by components/serve/service.py), else the LLM answers. An SLM answer that fails the
guardrail (no parse, unknown tool, arguments not valid against the tool's JSON schema) falls back to the LLM.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from components.core.clusters import OUTLIER
from components.core.router_file import Mode
from components.core.schema import ChatMessage

Route = Literal["slm", "llm", "shadow", "fallback"]


@dataclass(frozen=True)
class ClusterRoute:
    """How one cluster is served: its mode, the tools its SLM was trained on, and the canary share."""

    mode: Mode = "off"
    known_tools: frozenset[str] = field(default_factory=frozenset)
    canary_share: float = 0.1


@dataclass(frozen=True)
class Decision:
    cluster_id: int
    route: Route
    reason: str


def _in_canary(call_key: str, share: float, seed: int) -> bool:
    """A seeded, deterministic draw per call (same key and seed -> same answer), so a canary is reproducible."""
    digest = hashlib.sha256(f"{seed}:{call_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def request_tool_names(request_body: dict[str, Any]) -> set[str]:
    names = set()
    for tool in request_body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def decide(
    cluster_id: int, request_body: dict[str, Any], routes: dict[int, ClusterRoute], call_key: str, seed: int = 0
) -> Decision:
    """The route for one call: ``slm`` (SLM answers), ``shadow`` (LLM answers, SLM runs too) or ``llm``."""
    if cluster_id == OUTLIER:
        return Decision(cluster_id, "llm", "outlier")
    route = routes.get(cluster_id)
    if route is None or route.mode == "off":
        return Decision(cluster_id, "llm", "no SLM for cluster" if route is None else "mode off")
    unknown = request_tool_names(request_body) - route.known_tools
    if unknown:
        return Decision(cluster_id, "llm", f"{len(unknown)} tool(s) unknown to the cluster")
    if route.mode == "shadow":
        return Decision(cluster_id, "shadow", "shadow mode")
    if route.mode == "selective":
        # The SLM answers first; its confidence then decides whether its answer is sent or the LLM is asked.
        return Decision(cluster_id, "slm", "selective")
    if route.mode == "canary" and not _in_canary(call_key, route.canary_share, seed):
        return Decision(cluster_id, "llm", "outside canary share")
    return Decision(cluster_id, "slm", route.mode)


def check_tool_calls(message: ChatMessage, request_body: dict[str, Any]) -> str | None:
    """None when the SLM's message is acceptable, else the reason to fall back to the LLM.

    When the request offers tools, the SLM must call at least one; each call must name an offered tool and carry
    JSON arguments valid against that tool's ``parameters`` schema.
    """
    import jsonschema

    schemas = {}
    for tool in request_body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            schemas[function["name"]] = function.get("parameters") or {"type": "object"}
    if schemas and not message.tool_calls:
        return "no tool call parsed"
    for call in message.tool_calls:
        if call.name not in schemas:
            return "tool not offered by the request"
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            return "arguments are not JSON"
        try:
            jsonschema.validate(arguments, schemas[call.name])
        except jsonschema.ValidationError as error:
            # The validator message may echo argument values (possible PII): report the failing path only.
            return f"arguments invalid at {'/'.join(map(str, error.absolute_path)) or 'root'}"
    return None


def agreement(slm: ChatMessage, llm: ChatMessage) -> bool:
    """Same tool names with equal parsed arguments, in order (exact-match agreement for shadow/canary)."""

    def calls(message: ChatMessage) -> list[tuple[str, Any]]:
        out = []
        for call in message.tool_calls:
            try:
                out.append((call.name, json.loads(call.arguments or "{}")))
            except json.JSONDecodeError:
                out.append((call.name, call.arguments))
        return out

    if not slm.tool_calls and not llm.tool_calls:
        return (slm.content or "").strip() == (llm.content or "").strip()
    return calls(slm) == calls(llm)


def route_summary(
    routes_taken: list[dict[str, Any]], llm_cost_per_call: float, slm_cost_per_call: float
) -> dict[str, Any]:
    """Per cluster and overall: share served by SLMs, calls per route, share of SLM answers the guardrail sent back
    to the LLM, agreement (shadow), cost saved per 1k calls.

    ``routes_taken``: one ``{"cluster_id", "route", "agree"?}`` per call (as recorded by the router).
    """

    def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
        served = sum(row["route"] == "slm" for row in rows)
        compared = [row["agree"] for row in rows if row.get("agree") is not None]
        share = served / len(rows) if rows else 0.0
        fallbacks = sum(row["route"] == "fallback" for row in rows)
        return {
            "calls": len(rows),
            "slm_share": share,
            "routes": dict(Counter(row["route"] for row in rows)),
            "fallback_rate": fallbacks / (served + fallbacks) if served + fallbacks else None,
            "agreement": sum(compared) / len(compared) if compared else None,
            "cost_saved_per_1k": 1000 * share * (llm_cost_per_call - slm_cost_per_call),
        }

    clusters = sorted({row["cluster_id"] for row in routes_taken})
    return {
        "overall": summarise(routes_taken),
        "clusters": {cid: summarise([r for r in routes_taken if r["cluster_id"] == cid]) for cid in clusters},
    }
