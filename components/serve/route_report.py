"""S6 router report: what the router did with the proxy's traffic, from the stored calls' ``metadata.route``.

Per cluster and overall: calls, share answered by an SLM, calls per route, the guardrail's fallback rate (SLM
answers sent back to the LLM), agreement with the LLM (shadow calls) and the cost saved per 1k calls. The LLM's
cost per call is the mean logged (or priced) cost of the calls the LLM answered; the SLM's is its serving time at
the hourly price (``slm_hourly_cost_usd``, as in S6's evaluation), measured on the backends that answered (the
router records each SLM call's backend; the report names them, the machine and the hardware billed). Calls the router never placed (streaming,
unreadable) count with the outliers (cluster -1): the LLM answered them all the same.

The audit stream (components/serve/audit.py): per cluster the audited calls (an SLM-kept call the LLM answered
too), the share the SLM got right with its 95 % Wilson interval, and what the audits cost at the LLM's logged
price; with the promotions log's lines, each cluster's demotions (components/evaluate/demotion.py).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.evaluate.demotion import AuditedFigures, demotions_by_cluster, figures_of
from components.scoring.costs import cost_basis, describe_cost_basis, slm_cost_per_1k_calls
from components.serve.router import OUTLIER, route_summary

ROUTE_COLOURS = {"slm": "#2ca02c", "fallback": "#ff7f0e", "shadow": "#1f77b4", "llm": "#d62728"}


class RouteReportConfig(StepConfig):
    store_dir: str  # the proxy's store (``llm2slm proxy --store``)
    out_dir: str = "reports/route"
    slm_hourly_cost_usd: float = 0.10  # select's serving_hardware price (the CLI passes it from params.yaml)
    slm_serving_hardware: str = "cpu-2-cores"
    promotions_log: str = "reports/promotions.jsonl"  # the router's demotions (params refresh.promotions_log)


def routes_taken(records: Iterable[CallRecord]) -> list[dict[str, Any]]:
    """One row per routed call (calls stored without a router carry no route and are left out)."""
    rows = []
    for record in records:
        route = record.metadata.get("route")
        if not isinstance(route, dict):
            continue
        cluster_id = route.get("cluster_id")
        rows.append(
            {
                "cluster_id": OUTLIER if cluster_id is None else int(cluster_id),
                "route": route.get("route", "llm"),
                "agree": route.get("agree"),
                "latency_ms": record.latency_ms,
                "cost_usd": record.cost_usd,
                "backend": route.get("backend"),
                "audit": route.get("audit"),
            }
        )
    return rows


def audit_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The audited calls among ``rows``: how many, the SLM's accuracy on them with its interval, the audits' cost."""
    audited = [row for row in rows if row["audit"] in ("match", "miss")]
    figures = AuditedFigures(len(audited), sum(row["audit"] == "match" for row in audited))
    return {**figures_of(figures), "audit_cost": float(sum(row["cost_usd"] or 0.0 for row in audited))}


def route_report(
    records: Iterable[CallRecord],
    slm_hourly_cost_usd: float,
    slm_serving_hardware: str = "cpu-2-cores",
    demotions: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The summary, with the SLM's cost from the latencies of the calls it answered, on the backends that answered
    them (named in ``slm_cost_basis``; calls stored by a router that did not record it count as 'not recorded'),
    the audit figures and, from the promotions log's lines (``demotions``), each cluster's demotions."""
    rows = routes_taken(records)
    llm_costs = [row["cost_usd"] for row in rows if row["route"] != "slm" and row["cost_usd"]]
    served = [row for row in rows if row["route"] == "slm" and row["latency_ms"] is not None]
    llm_cost = float(np.mean(llm_costs)) if llm_costs else 0.0
    slm_cost = slm_cost_per_1k_calls([row["latency_ms"] for row in served], slm_hourly_cost_usd) / 1000
    backends = sorted({row["backend"] or "not recorded" for row in served}) or ["none (no call answered by an SLM)"]
    summary = route_summary(rows, llm_cost, slm_cost)
    summary["overall"].update(audit_figures(rows))
    demoted = demotions_by_cluster(demotions)
    summary["overall"]["demotions"] = [line for lines in demoted.values() for line in lines]
    for cluster_id, entry in summary["clusters"].items():
        entry.update(audit_figures([row for row in rows if row["cluster_id"] == cluster_id]))
        entry["demotions"] = demoted.get(cluster_id, [])
    return {
        **summary,
        "llm_cost_per_call": llm_cost,
        "slm_cost_per_call": slm_cost,
        "slm_cost_basis": cost_basis(", ".join(backends), slm_serving_hardware, slm_hourly_cost_usd),
    }


def _routes_png(summary: dict[str, Any]) -> str:
    """Per cluster, the share of calls per route (stacked bars) and the shadow agreement (dots), as base64 PNG."""
    from matplotlib.figure import Figure

    clusters = summary["clusters"]
    names = [("outliers" if cid == OUTLIER else f"#{cid}") for cid in clusters]
    positions = np.arange(len(names))
    figure = Figure(figsize=(max(5.0, 0.8 * len(names) + 2), 4), dpi=100)
    axes = figure.add_subplot()
    bottom = np.zeros(len(names))
    for route, colour in ROUTE_COLOURS.items():
        shares = np.array([c["routes"].get(route, 0) / c["calls"] for c in clusters.values()])
        axes.bar(positions, shares, bottom=bottom, color=colour, label=route)
        bottom += shares
    agreement = [(i, c["agreement"]) for i, c in enumerate(clusters.values()) if c["agreement"] is not None]
    if agreement:
        axes.scatter(*zip(*agreement), color="black", marker="D", zorder=3, label="agreement (shadow)")
    axes.set_xticks(positions, names)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("share of calls")
    axes.set_title("Route taken per cluster")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _audited(entry: dict[str, Any]) -> str:
    if entry.get("audited_accuracy") is None:
        return ""
    low, high = entry["audited_interval"]
    return f"{entry['audited_accuracy']:.1%} ({low:.1%}–{high:.1%})"


def write_route_report(summary: dict[str, Any], path: Path) -> Path:
    """A self-contained HTML page: the overall figures, the per-cluster table and the plot (embedded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [
        "cluster",
        "calls",
        "SLM share",
        *ROUTE_COLOURS,
        "fallback rate",
        "agreement",
        "audited",
        "audited accuracy (95 % CI)",
        "demotions",
        "saved / 1k calls",
    ]
    rows = []
    for name, entry in [
        ("all", summary["overall"]),
        *((("outliers" if cid == OUTLIER else f"#{cid}"), c) for cid, c in summary["clusters"].items()),
    ]:
        cells = [
            name,
            entry["calls"],
            _percent(entry["slm_share"]),
            *(entry["routes"].get(r, 0) for r in ROUTE_COLOURS),
            _percent(entry["fallback_rate"]),
            _percent(entry["agreement"]),
            entry.get("audited_calls", 0),
            _audited(entry),
            len(entry.get("demotions", [])),
            f"${entry['cost_saved_per_1k']:.4f}",
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    figure = (
        f'<img alt="routes per cluster" src="data:image/png;base64,{_routes_png(summary)}">'
        if summary["clusters"]
        else ""
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>llm2slm router</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        "<h1>Router: who answered the agent's calls</h1>"
        f"<p>{summary['overall']['calls']} routed calls; LLM cost per call ${summary['llm_cost_per_call']:.6f}, "
        f"SLM cost per call ${summary['slm_cost_per_call']:.6f}. Fallback rate: SLM answers the guardrail sent "
        "back to the LLM. Agreement: shadow calls whose SLM answer matched the LLM's. Audited accuracy: the share of "
        "audited calls (SLM-kept calls the LLM answered too) whose SLM answer matched the LLM's; a cluster below "
        "parity on enough of them is demoted to shadow. "
        f"{html.escape(describe_cost_basis(summary['slm_cost_basis']))}.</p>"
        f"<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>{''.join(rows)}</table>"
        f"{figure}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path
