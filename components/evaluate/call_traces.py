"""What S6 shows of each held-out call as a trace: the request, the LLM's answer (the expectation), the base and
fine-tuned SLM answers with their latencies, each metric as a verdict on the call, and, where the cluster's entry
has a selective gate, the calibrated confidence and what the shipped gate does with the call. Pure: built from
the evaluation entries and their per-call rows (components/evaluate/entry.py); the task writes them to MLflow.

The texts are the per-call rows' own, S2's anonymized ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

from components.evaluate.evaluation import BINARY_METRICS
from components.evaluate.router_config import route_mode
from components.evaluate.selective import Calibrator, feature_matrix
from components.slm.confidence import FEATURES

SYSTEMS = ("slm_base", "slm_finetuned")


@dataclass(frozen=True)
class CallTrace:
    """One held-out call as a trace: ``feedback`` holds one verdict per metric (the fine-tuned SLM's under the
    metric's name, the base SLM's primary metric as ``slm_base.<metric>``; 0/1 metrics as booleans), ``expected``
    the LLM's answer, ``tags`` what the Traces tab filters on."""

    cluster_id: int
    record_id: str
    request: str
    expected: str
    answers: dict[str, str]
    latency_ms: dict[str, float]
    feedback: dict[str, bool | float]
    tags: dict[str, str]
    confidence: float | None = None
    route: str = "llm"
    features: dict[str, float] = field(default_factory=dict)


def call_metrics(row: Mapping[str, Any], system: str = "slm_finetuned") -> dict[str, float]:
    """A system's metric values in a per-call row (``<system>.<metric>``), without its latency and confidence."""
    prefix = f"{system}."
    return {
        key[len(prefix) :]: float(value)
        for key, value in row.items()
        if key.startswith(prefix) and key[len(prefix) :] not in (*FEATURES, "latency_ms")
    }


def verdict(metric: str, value: float) -> bool | float:
    """A 0/1 metric as pass/fail (the UI filters on it); any other as its value."""
    return value >= 1.0 if metric in BINARY_METRICS else value


def outcome(value: float | None) -> str:
    """``match`` (the primary metric is 1), ``miss`` (0) or ``partial`` (a token F1 in between)."""
    if value is None:
        return "unscored"
    return "match" if value >= 1.0 else "miss" if value <= 0.0 else "partial"


def answer_features(row: Mapping[str, Any]) -> dict[str, float]:
    """The fine-tuned answer's confidence features in a per-call row (empty when it came without them)."""
    return {name: float(row[f"slm_finetuned.{name}"]) for name in FEATURES if f"slm_finetuned.{name}" in row}


def gate_on_call(entry: Mapping[str, Any], row: Mapping[str, Any]) -> tuple[float | None, str]:
    """The calibrated confidence of the call's fine-tuned answer under the cluster's shipped calibrator (None
    without one) and who answers the call as the router is configured: ``slm`` (a promoted cluster, or a selective
    one whose gate accepts it) or ``llm`` (the SLM runs in shadow, or the gate defers the call)."""
    mode = route_mode(entry)
    figures = entry.get("selective") or {}
    features = answer_features(row)
    confidence = None
    if figures.get("calibrator") and features:
        calibrator = Calibrator.from_dict(figures["calibrator"])
        confidence = float(calibrator.predict(feature_matrix([features], calibrator.features))[0])
    if mode == "on":
        return confidence, "slm"
    threshold = figures.get("threshold")
    accepted = mode == "selective" and confidence is not None and threshold is not None and confidence >= threshold
    return confidence, "slm" if accepted else "llm"


def call_trace(entry: Mapping[str, Any], row: Mapping[str, Any]) -> CallTrace:
    metric = entry["primary_metric"]
    tuned = call_metrics(row, "slm_finetuned")
    base = call_metrics(row, "slm_base")
    feedback: dict[str, bool | float] = {name: verdict(name, value) for name, value in tuned.items()}
    if metric in base:
        feedback[f"slm_base.{metric}"] = verdict(metric, base[metric])
    confidence, route = gate_on_call(entry, row)
    tags = {
        "cluster_id": str(entry["cluster_id"]),
        "record_id": str(row["record_id"]),
        "llm2slm.outcome": outcome(tuned.get(metric)),
        "llm2slm.mode": route_mode(entry),
        "llm2slm.route": route,
    }
    if confidence is not None:
        tags["llm2slm.confidence"] = f"{confidence:.3f}"
    return CallTrace(
        cluster_id=int(entry["cluster_id"]),
        record_id=str(row["record_id"]),
        request=str(row.get("request") or ""),
        expected=str(row.get("llm") or ""),
        answers={system: str(row.get(system) or "") for system in SYSTEMS},
        latency_ms={system: float(row.get(f"{system}.latency_ms") or 0.0) for system in SYSTEMS},
        feedback=feedback,
        tags=tags,
        confidence=confidence,
        route=route,
        features=answer_features(row),
    )


def call_traces(
    entries: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], max_traces: int
) -> list[CallTrace]:
    """At most ``max_traces`` traces, taken in turn from each cluster (its held-out calls in order), so that a
    large cluster does not crowd out the others; 0 logs none."""
    by_cluster = {int(e["cluster_id"]): e for e in entries}
    per_cluster: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        if int(row["cluster_id"]) in by_cluster:
            per_cluster.setdefault(int(row["cluster_id"]), []).append(row)
    interleaved = [row for turn in zip_longest(*per_cluster.values()) for row in turn if row is not None]
    return [call_trace(by_cluster[int(row["cluster_id"])], row) for row in interleaved[: max(0, max_traces)]]
