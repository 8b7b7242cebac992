"""The Markdown a flow run publishes where Prefect users look (its Artifacts tab): the conversion's headline (the
share of calls at the LLM's quality, the cost per 1k calls) and per-cluster table, or a refresh's decisions, each
with where its MLflow run is. Pure: the flows publish it (tasks/helpers/flow_artifacts.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.evaluate.drift import describe_drift
from components.evaluate.evaluation import write_markdown_summary


@dataclass(frozen=True)
class RunLink:
    """Where an MLflow run is: its id, the tracking URI, and the run page's URL when the URI is a server's."""

    run_id: str
    tracking_uri: str
    url: str | None = None

    def markdown(self) -> str:
        if self.url:
            return f"MLflow run: [{self.run_id}]({self.url})"
        return (
            f"MLflow run: `{self.run_id}` in `{self.tracking_uri}` "
            f"(browse with `mlflow ui --backend-store-uri {self.tracking_uri}`)"
        )


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI of an http(s) tracking server; None for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _money(value: Any) -> str:
    return f"${value:.2f}" if isinstance(value, (int, float)) else "-"


def conversion_markdown(evaluation: Mapping[str, Any], run: RunLink) -> str:
    """The conversion's headline, its figures and one row per evaluated cluster (reports/evaluation.json)."""
    summary, entries = evaluation.get("summary", {}), evaluation.get("clusters", [])
    lines = [
        "# llm2slm conversion",
        "",
        f"**{summary.get('headline', 'No summary.')}**",
        "",
        "| calls at the LLM's quality | share | of which selective | cost per 1k calls | the LLM's | saved |",
        "|---|---|---|---|---|---|",
        f"| {summary.get('calls_at_parity', 0)} of {summary.get('calls_total', 0)} "
        f"| {summary.get('share_at_parity', 0.0):.1%} | {summary.get('share_at_parity_selective', 0.0):.1%} "
        f"| {_money(summary.get('blended_cost_per_1k_calls'))} | {_money(summary.get('llm_cost_per_1k_calls'))} "
        f"| {summary.get('savings_share', 0.0):.0%} |",
        "",
        "## Clusters",
        "",
    ]
    lines.append(write_markdown_summary(list(entries)) if entries else "No cluster was evaluated.\n")
    for item in summary.get("not_converted", []):
        lines.append(f"- cluster {item['cluster_id']} not converted: {item['reason']}")
    lines += ["", run.markdown(), ""]
    return "\n".join(lines)


def _score(figures: Mapping[str, Any] | None) -> str:
    if not figures:
        return "-"
    version = f" (v{figures['version']})" if figures.get("version") else ""
    return f"{figures['score']:.3f}{version}"


def refresh_markdown(summary: Mapping[str, Any], run: RunLink) -> str:
    """A refresh's batch, drift, what was retrained and each challenger's decision against the champion and the LLM
    on the same fresh held-out calls (the ``refresh`` flow's summary)."""
    clusters = summary.get("clusters", [])
    promoted = [e for e in clusters if e.get("promoted")]
    drift = summary.get("drift") or {}
    lines = [
        f"# llm2slm refresh {summary.get('refresh', '')}",
        "",
        f"**{summary.get('batch_records', 0)} new calls; {len(summary.get('retrained', {}))} cluster(s) retrained, "
        f"{len(promoted)} challenger(s) promoted to champion.**",
        "",
        f"Drift: {describe_drift(drift) if drift else 'not measured'}",
        "",
    ]
    for cluster_id, why in summary.get("retrained", {}).items():
        lines.append(f"- cluster {cluster_id} retrained: {why}")
    lines += selective_serving_lines(summary)
    lines += [
        "",
        "| cluster | label | metric | n_test | llm | base | champion | challenger | cost/1k llm "
        "| cost/1k challenger | promoted | reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in clusters:
        systems = entry.get("systems", {})
        label = str(entry.get("label", "")).replace("|", "/")
        reason = str(entry.get("reason", "")).replace("|", "/")
        lines.append(
            f"| {entry.get('cluster_id')} | {label} | {entry.get('primary_metric', '')} | {entry.get('n_test', 0)} "
            f"| {_score(systems.get('llm'))} | {_score(systems.get('slm_base'))} | {_score(systems.get('champion'))} "
            f"| {_score(systems.get('challenger'))} | {_money((systems.get('llm') or {}).get('cost_per_1k_calls'))} "
            f"| {_money((systems.get('challenger') or {}).get('cost_per_1k_calls'))} "
            f"| {'yes' if entry.get('promoted') else 'no'} | {reason} |"
        )
    if not clusters:
        lines.append("| - | no challenger this refresh | | | | | | | | | | |")
    lines += ["", run.markdown(), ""]
    return "\n".join(lines)


def selective_serving_lines(summary: Mapping[str, Any]) -> list[str]:
    """A refresh's production side (components/serve/audit.py): the batch's audited accuracy per cluster, the
    router's demotions it applied, and the share of calls the champion and challenger serve at parity."""
    lines = []
    for cluster_id, figures in (summary.get("audited") or {}).items():
        low, high = figures.get("audited_interval") or (0.0, 0.0)
        lines.append(
            f"- cluster {cluster_id} audited: accuracy {figures['audited_accuracy']:.3f} [{low:.2f}-{high:.2f}] "
            f"on {figures['audited_calls']} audited calls"
        )
    for demotion in summary.get("demotions") or []:
        moved = (
            f"champion v{demotion['from_version']} -> {'v' + str(demotion['to_version']) if demotion.get('to_version') else 'none'}"
            if demotion.get("alias_moved")
            else "no champion alias to move"
        )
        lines.append(f"- cluster {demotion['cluster_id']} demoted by the router (audited calls below parity): {moved}")
    for cluster_id, figures in (summary.get("coverage") or {}).items():
        served = figures.get("served_at_parity") or {}
        if served:
            shares = ", ".join(f"{system} {share:.2f}" for system, share in served.items())
            lines.append(f"- cluster {cluster_id} calls served at parity: {shares}")
    return lines
