"""The headline of a run: how many of the agent's calls an SLM serves at the LLM's quality, and what that saves.

``calls_total`` counts every collected call (outliers and calls S2 filtered out included; quarantined lines are not
calls; a call the agent made again later is one more call, see components/collect/ingest.py). A call is *at parity*
when its request-only cluster assignment (what the router computes, with no answer yet) lands in a cluster whose SLM
the gate promoted. A repeat S2 kept out of the training data (one copy trains) has no assignment of its own: it
lands where its copy does, since the router sees the same request. A cluster in ``selective`` mode (the SLM answers
the calls it is sure of, the LLM the rest) counts its calls × its out-of-fold coverage as at parity. The blended
cost prices calls at parity at their cluster's SLM cost; a selective cluster's calls at the SLM's cost (it answers
every call, to know whether it is sure) plus the LLM's cost for the deferred share; every other call at its logged
LLM cost. Calls of unknown LLM cost count at the mean of the known ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.core.clusters import OUTLIER


@dataclass(frozen=True)
class CollectedCall:
    record_id: str
    llm_cost_usd: float | None
    content_key: str | None = None  # S1's content hash: the copies of a repeated call share it


def _clusters_of(calls: Sequence[CollectedCall], request_clusters: Mapping[str, int]) -> dict[str, int]:
    """Each call's cluster: its own assignment, else that of a copy with the same content, else the outliers."""
    by_content: dict[str, int] = {}
    for call in calls:
        if call.content_key is not None and call.record_id in request_clusters:
            by_content.setdefault(call.content_key, int(request_clusters[call.record_id]))
    return {
        call.record_id: int(request_clusters.get(call.record_id, by_content.get(call.content_key or "", OUTLIER)))
        for call in calls
    }


def _mean_known(costs: Iterable[float | None]) -> float:
    known = [c for c in costs if c is not None]
    return sum(known) / len(known) if known else 0.0


def run_summary(
    calls: Sequence[CollectedCall],
    request_clusters: Mapping[str, int],
    entries: Sequence[Mapping[str, Any]],
    not_converted: Sequence[Mapping[str, Any]] = (),
    slm_cost_basis: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary`` of reports/evaluation.json.

    ``request_clusters``: record id -> cluster from the request alone (calls without one stay with the LLM);
    ``entries``: the evaluated clusters (``cluster_id``, ``promoted``, ``cost_per_1k_calls.slm_finetuned``);
    ``not_converted``: chosen clusters that could not be trained or evaluated, each ``{cluster_id, reason}``;
    ``slm_cost_basis``: what the SLM costs assume (components/scoring/costs.py::cost_basis), kept beside them.
    """
    fallback_cost = _mean_known(c.llm_cost_usd for c in calls)
    llm_costs = {c.record_id: c.llm_cost_usd if c.llm_cost_usd is not None else fallback_cost for c in calls}
    evaluated = {int(e["cluster_id"]): e for e in entries}
    promoted = {cid for cid, e in evaluated.items() if e.get("promoted")}
    coverage = {
        cid: float((e.get("selective") or {}).get("coverage") or 0.0)
        for cid, e in evaluated.items()
        if cid not in promoted and e.get("mode") == "selective"
    }
    cluster_of = _clusters_of(calls, request_clusters)
    sizes = Counter(cluster_of.values())
    at_parity = {rid for rid, cid in cluster_of.items() if cid in promoted}
    selective_calls = sum(sizes[cid] * share for cid, share in coverage.items())

    def served_cost(record_id: str) -> float:
        cluster_id = cluster_of[record_id]
        if record_id in at_parity:
            return evaluated[cluster_id]["cost_per_1k_calls"]["slm_finetuned"] / 1000
        if cluster_id in coverage:
            slm = evaluated[cluster_id]["cost_per_1k_calls"]["slm_finetuned"] / 1000
            return slm + (1 - coverage[cluster_id]) * llm_costs[record_id]
        return llm_costs[record_id]

    llm_total = sum(llm_costs.values())
    blended_total = sum(served_cost(rid) for rid in llm_costs)
    n = len(calls)
    served = len(at_parity) + selective_calls
    summary = {
        "calls_total": n,
        "calls_in_converted_clusters": sum(sizes[cid] for cid in evaluated),
        "calls_at_parity": round(served),
        "calls_at_parity_selective": round(selective_calls),
        "share_at_parity": served / n if n else 0.0,
        "share_at_parity_selective": selective_calls / n if n else 0.0,
        "llm_cost_per_1k_calls": llm_total / n * 1000 if n else 0.0,
        "blended_cost_per_1k_calls": blended_total / n * 1000 if n else 0.0,
        "savings_share": 1 - blended_total / llm_total if llm_total else 0.0,
        "clusters_evaluated": sorted(evaluated),
        "clusters_at_parity": sorted(promoted),
        "clusters_selective": sorted(coverage),
        "not_converted": [dict(item) for item in not_converted],
        "slm_cost_basis": dict(slm_cost_basis) if slm_cost_basis else None,
    }
    summary["headline"] = headline(summary)
    return summary


def headline(summary: Mapping[str, Any]) -> str:
    """One sentence a user reads first; a run that converts nothing says so."""
    if not summary["clusters_evaluated"]:
        skipped = "; ".join(f"cluster {s['cluster_id']}: {s['reason']}" for s in summary["not_converted"])
        return "No task was converted: every call stays with the LLM" + (f" ({skipped})" if skipped else "") + "."
    text = (
        f"{summary['share_at_parity']:.0%} of the agent's calls ({summary['calls_at_parity']} of "
        f"{summary['calls_total']}) are served by an SLM at the LLM's quality; cost per 1k calls "
        f"${summary['blended_cost_per_1k_calls']:.2f} instead of ${summary['llm_cost_per_1k_calls']:.2f} "
        f"({summary['savings_share']:.0%} saved)."
    )
    if summary.get("clusters_selective"):
        text = text[:-1] + (
            f"; of that share, {summary['share_at_parity_selective']:.0%} of the agent's calls are selective (in "
            f"{len(summary['clusters_selective'])} cluster(s) the SLM answers the calls it is sure of, the LLM the "
            f"rest)."
        )
    if summary["not_converted"]:
        text += " Not converted: " + "; ".join(
            f"cluster {s['cluster_id']} ({s['reason']})" for s in summary["not_converted"]
        )
        text += "."
    return text
