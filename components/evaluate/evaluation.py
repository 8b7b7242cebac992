"""Cost, latency, intervals and the HTML report, shared by S4 select and S6 evaluate. Framework-free on purpose.

The per-answer metrics live in components/scoring/metrics.py, costs and latencies in components/scoring/costs.py.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from components.core.config import StepConfig
from components.evaluate.learning_curve import LearningCurveSettings
from components.evaluate.promotion import PromotionPolicy
from components.finetune.train import FinetuneConfig
from components.scoring.costs import describe_cost_basis
from components.scoring.metrics import METRICS

SYSTEMS = ["llm", "slm_base", "slm_finetuned"]
# Every score's reference is the LLM's logged answer, so the LLM scores 1.0 against itself by construction: it is
# shown as the reference, with no interval.
REFERENCE = "llm"


class EvaluateConfig(StepConfig):
    curated: str = "data/curated/records.parquet"
    splits: str = "data/splits/splits.parquet"
    leaderboard: str = "reports/leaderboard.json"
    base_predictions: str = "data/predictions/slm_base.parquet"
    adapters: str = "models/adapters"
    finetune_summary: str = "reports/finetune.json"
    evaluation: str = "reports/evaluation.json"
    metrics: str = "reports/metrics.json"
    report: str = "reports/report.html"
    predictions: str = "data/predictions/slm_finetuned.parquet"
    router_config: str = "reports/router.yaml"  # the gate's decisions as `llm2slm proxy --route` config
    promotions_log: str = "reports/promotions.jsonl"  # router.yaml names it: where the router logs a demotion
    # selective clusters' gates (calibrator + threshold, one JSON per cluster) the router config names
    selective_gates: str = "models/selective"
    collected: str = "data/collected/records.parquet"  # every collected call: the summary's calls_total
    assignments: str = "data/clusters/assignments.parquet"  # S3's cluster of each call: where calls at parity are
    max_new_tokens: int = 256  # a cap: the adapter's prompt spec holds its own, smaller budget
    constrained_decoding: bool = True  # calls that offer tools are decoded under their grammar
    batch_size: int = 8
    # What generates the fine-tuned SLM's answers, their confidence (the selective gate is fitted on it) and so
    # their latency and cost: the engine `serve-slm` serves with. onnxruntime-genai (the default, from wheels;
    # transformers eager answers a model it cannot load), transformers (eager) or llama-cpp (the optional extra
    # llm2slm[llama-cpp] and a llama.cpp tree in $LLM2SLM_LLAMA_CPP_DIR). Both non-eager engines always decode
    # tool calls under the grammar. The base model's answers are S4's, from transformers.
    engine: Literal["onnxruntime-genai", "transformers", "llama-cpp"] = "onnxruntime-genai"
    engine_threads: int | None = None  # the engine's CPU threads; None: one per core
    learning_curve: LearningCurveSettings = LearningCurveSettings()
    # Held-out calls logged as MLflow traces of the evaluate run, with their assessments (~0.25 s each on 2 cores)
    max_traces: int = Field(default=200, ge=0)
    # Written once elsewhere in params.yaml, filled in by the loader (flows/steps.py SHARED_VALUES): the SLM's
    # serving price (select's serving_hardware), the one gate (top-level `promotion:`), S3's cluster model,
    # which the router config names so the router places requests as S3 did, and S5's training settings, with
    # which the learning curve trains.
    cluster_model_dir: str = "data/clusters/model"
    slm_hourly_cost_usd: float = 0.10
    slm_serving_hardware: str = "cpu-2-cores"
    promotion: PromotionPolicy = PromotionPolicy()
    finetune: FinetuneConfig = FinetuneConfig()
    registered_model_prefix: str = "llm2slm"
    alias: str = "champion"

    @model_validator(mode="after")
    def _engine_keeps_the_grammar(self) -> EvaluateConfig:
        if self.engine != "transformers" and not self.constrained_decoding:
            raise ValueError(
                f"evaluate.engine {self.engine} always decodes under the tool grammar: set constrained_decoding"
            )
        return self


# ---- intervals -----------------------------------------------------------------------------


# Metrics that are 0 or 1 per answer: their mean over n held-out calls is a proportion.
BINARY_METRICS = frozenset({"full_call_match", "exact_match", "valid_json", "json_valid", "schema_valid"})


def proportion_interval(rate: float, n: int, confidence: float = 0.95) -> list[float] | None:
    """Wilson interval of a rate measured on ``n`` calls (sound at n = 10 and at 0 % or 100 %, where the normal
    approximation is not); None without calls. With 10 held-out calls, 50 % means anything from 24 % to 76 %."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    interval = binomtest(round(rate * n), n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(interval.low), float(interval.high)]


def primary_metric_intervals(
    scores: dict[str, dict[str, float]], primary_metric: str, n: int
) -> dict[str, list[float] | None] | None:
    """The 95 % interval of each system's primary metric, when that metric is a proportion; else None. The LLM is the
    reference (its answers score themselves): no interval."""
    if primary_metric not in BINARY_METRICS:
        return None
    return {
        system: None if system == REFERENCE else proportion_interval(scores[system].get(primary_metric, 0.0), n)
        for system in scores
    }


# ---- reports ----------------------------------------------------------------------------------------------


def _metric_columns(entry: dict[str, Any]) -> list[str]:
    columns = list(METRICS.get(entry.get("output_kind", ""), []))
    for system in SYSTEMS:
        columns += [m for m in entry.get("scores", {}).get(system, {}) if m not in columns]
    return columns


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def _scatter_png(entries: list[dict[str, Any]]) -> str:
    """Quality (primary metric) against cost per 1k calls, one point per cluster and system, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a buffer
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    styles = {"llm": ("o", "#d62728"), "slm_base": ("s", "#7f7f7f"), "slm_finetuned": ("^", "#1f77b4")}
    costs = []
    for entry in entries:
        for system in SYSTEMS:
            cost = entry.get("cost_per_1k_calls", {}).get(system)
            quality = entry.get("scores", {}).get(system, {}).get(entry.get("primary_metric", ""))
            if cost is None or quality is None:
                continue
            costs.append(cost)
            marker, colour = styles[system]
            axes.scatter(cost, quality, marker=marker, color=colour, s=60, label=system)
            axes.annotate(f"#{entry.get('cluster_id')}", (cost, quality), textcoords="offset points", xytext=(5, 4))
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        axes.legend(unique.values(), unique.keys())
    # Costs span orders of magnitude (API vs self-hosted); symlog copes with a zero cost too.
    if costs and max(costs) > 0:
        axes.set_xscale("symlog", linthresh=max(min([c for c in costs if c > 0], default=1e-3), 1e-6))
    axes.set_xlabel("cost per 1k calls (USD)")
    axes.set_ylabel("primary metric")
    axes.set_ylim(-0.05, 1.05)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _interval(bounds: list[float] | None) -> str:
    return f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else ""


def _primary(entry: dict[str, Any], system: str) -> str:
    """A system's primary metric with its interval; the LLM's as the reference it is (no interval)."""
    value = entry.get("scores", {}).get(system, {}).get(entry.get("primary_metric", ""))
    if system == REFERENCE:
        return f"{_number(value)} (reference)"
    return _number(value) + _interval((entry.get("primary_metric_ci95") or {}).get(system))


def _risk_coverage_png(curve: list[dict[str, float]], target: float | None, coverage: float | None) -> str:
    """The out-of-fold risk-coverage curve of one cluster's SLM (risk = 1 − accuracy of the accepted calls)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot([p["coverage"] for p in curve], [p["risk"] for p in curve], color="#1f77b4", label="fine-tuned SLM")
    if target is not None:
        axes.axhline(1 - target, color="#d62728", linestyle="--", label="risk at parity")
    if coverage:
        axes.axvline(coverage, color="#2ca02c", linestyle=":", label="coverage shipped (out of fold)")
    axes.set_xlabel("coverage (share of held-out calls the SLM answers)")
    axes.set_ylabel("risk (share answered wrong)")
    axes.set_xlim(0, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _selective_section(entry: dict[str, Any]) -> str:
    """The SLM answering only the calls it is sure of: out-of-fold coverage, accepted accuracy and the curve."""
    figures = entry.get("selective")
    if not figures:
        return ""
    accuracy = figures.get("accepted_accuracy")
    shown = f"{_number(accuracy)}{_interval(figures.get('accepted_interval'))}" if accuracy is not None else "–"
    rows = [
        ("mode", str(entry.get("mode", ""))),
        ("threshold (calibrated confidence)", _number(figures.get("threshold"))),
        ("coverage (out of fold)", f"{figures.get('coverage', 0.0):.1%}"),
        ("accepted accuracy", shown),
        ("accepted / deferred calls", f"{figures.get('accepted_calls')} / {figures.get('deferred_calls')}"),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    curve = figures.get("risk_coverage") or []
    plot = (
        f"<img alt='risk-coverage' src='data:image/png;base64,"
        f"{_risk_coverage_png(curve, figures.get('target'), figures.get('coverage'))}'>"
        if curve
        else ""
    )
    return f"<h3>Selective parity</h3><table>{table}</table>{plot}"


def _learning_curve_section(curve: dict[str, Any] | None) -> str:
    """How far the cluster is from parity: its score at each training size, and what the fitted curve says."""
    if not curve:
        return ""
    points = curve.get("points") or []
    sizes = "".join(f"<th>{p['n_train']}</th>" for p in points)
    scores = "".join(f"<td>{_number(p['score'])}</td>" for p in points)
    ceiling = curve.get("ceiling")
    fit = f" · fitted ceiling {_number(ceiling)}{_interval(curve.get('ceiling_ci95'))}" if ceiling is not None else ""
    table = f"<table><tr><th>training calls</th>{sizes}</tr><tr><th>primary metric</th>{scores}</tr></table>"
    return f"<h3>Learning curve</h3>{table if points else ''}<p>{html.escape(str(curve.get('verdict', '')))}{fit}</p>"


def _cluster_section(entry: dict[str, Any]) -> str:
    columns = _metric_columns(entry)
    primary = entry.get("primary_metric")
    head = "".join(f"<th>{html.escape(c)}{' ★' if c == primary else ''}</th>" for c in columns)
    rows = []
    intervals = entry.get("primary_metric_ci95") or {}
    for system in SYSTEMS:
        scores = entry.get("scores", {}).get(system, {})
        cells = "".join(
            f"<td>{_primary(entry, system) if c == primary else _number(scores.get(c))}</td>" for c in columns
        )
        cost = entry.get("cost_per_1k_calls", {}).get(system)
        latency = entry.get("latency_ms_p50", {}).get(system)
        rows.append(f"<tr><th>{system}</th>{cells}<td>{_number(cost, 4)}</td><td>{_number(latency, 0)}</td></tr>")
    promoted = "yes" if entry.get("promoted") else "no"
    return (
        f"<h2>Cluster #{html.escape(str(entry.get('cluster_id')))}: {html.escape(str(entry.get('label', '')))}</h2>"
        f"<p>{html.escape(str(entry.get('output_kind', '')))} answers · {entry.get('n_train', '–')} training / "
        f"{entry.get('n_test', '–')} test calls · primary metric ★ {html.escape(str(primary))}"
        f"{' with its 95 % interval [low, high]' if intervals else ''}</p>"
        f"<table><tr><th>system</th>{head}<th>cost / 1k calls (USD)</th><th>p50 latency (ms)</th></tr>"
        f"{''.join(rows)}</table>"
        f"<p class='{'yes' if entry.get('promoted') else 'no'}'>Promoted: <b>{promoted}</b> — "
        f"{html.escape(str(entry.get('promotion_reason', '')))}</p>"
        f"{_selective_section(entry)}"
        f"{_learning_curve_section(entry.get('learning_curve'))}"
    )


def _summary_section(summary: dict[str, Any] | None) -> str:
    """The headline first: the share of the agent's calls served at the LLM's quality, and the cost saved."""
    if not summary:
        return ""
    figures = [
        ("calls collected", f"{summary['calls_total']}"),
        ("in converted clusters", f"{summary['calls_in_converted_clusters']}"),
        ("at parity (served by an SLM)", f"{summary['calls_at_parity']} ({summary['share_at_parity']:.1%})"),
        ("LLM cost / 1k calls", f"${summary['llm_cost_per_1k_calls']:.4f}"),
        ("blended cost / 1k calls", f"${summary['blended_cost_per_1k_calls']:.4f}"),
        ("saved", f"{summary['savings_share']:.1%}"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in figures)
    basis = summary.get("slm_cost_basis")
    assumes = f"<p>{html.escape(describe_cost_basis(basis))}.</p>" if basis else ""
    return f"<p class='headline'><b>{html.escape(summary['headline'])}</b></p><table>{rows}</table>{assumes}"


def write_report(entries: list[dict[str, Any]], path: Path, summary: dict[str, Any] | None = None) -> Path:
    """A self-contained HTML report (no external files): the run's summary, one table per cluster and a
    quality-vs-cost plot."""
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        ".yes b{color:#1a7f37}.no b{color:#b42318}"
    )
    sections = "".join(_cluster_section(entry) for entry in entries) or "<p>No cluster was evaluated.</p>"
    plot = (
        f"<h2>Quality vs cost</h2><img alt='quality vs cost' src='data:image/png;base64,{_scatter_png(entries)}'>"
        if entries
        else ""
    )
    document = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>llm2slm evaluation report</title>"
        f"<style>{style}</style></head><body><h1>llm2slm evaluation report</h1>"
        f"<p>The LLM's logged answers are the reference; the base and fine-tuned SLMs are scored against "
        f"them on each cluster's held-out calls.</p>{_summary_section(summary)}{sections}{plot}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path


def _promoted(entry: dict[str, Any]) -> str:
    if entry.get("promoted"):
        return "yes"
    figures = entry.get("selective") or {}
    if entry.get("mode") == "selective":
        return f"selective ({figures.get('coverage', 0.0):.0%} of calls)"
    return "no"


def write_markdown_summary(entries: list[dict[str, Any]]) -> str:
    """One Markdown table row per cluster: primary metric of each system (with its 95 % interval when it is a
    proportion; the LLM's is the reference), costs per 1k calls, promotion (or selective with its coverage)."""
    lines = [
        "| cluster | label | primary metric | llm | slm_base | slm_finetuned | "
        "cost/1k llm | cost/1k slm_finetuned | promoted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        metric = entry.get("primary_metric", "")
        scores = [_primary(entry, system) for system in SYSTEMS]
        costs = entry.get("cost_per_1k_calls", {})
        label = str(entry.get("label", "")).replace("|", "/")
        lines.append(
            f"| {entry.get('cluster_id')} | {label} | {metric} | {' | '.join(scores)} | "
            f"{_number(costs.get('llm'), 4)} | {_number(costs.get('slm_finetuned'), 4)} | "
            f"{_promoted(entry)} |"
        )
    return "\n".join(lines) + "\n"
