"""What a call costs: the LLM's logged (or priced) cost, and a self-hosted SLM's share of its machine's hourly price
for the time the call occupies it; latency percentiles. One rule for S4, S6 and the route report."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from components.core.machine import machine_description
from components.core.schema import CallRecord


def llm_cost_per_1k_calls(records: Iterable[CallRecord]) -> float:
    """Mean logged (or priced) LLM cost of a call × 1000; calls of unknown cost are left out; 0.0 if none known."""
    costs = [r.cost_usd for r in records if r.cost_usd is not None]
    return float(np.mean(costs)) * 1000 if costs else 0.0


def slm_cost_per_1k_calls(latencies_ms: Iterable[float], hourly_cost_usd: float) -> float:
    """Self-hosted cost: each call occupies the serving machine for its latency, billed at the hourly price."""
    latencies = list(latencies_ms)
    if not latencies:
        return 0.0
    return float(np.mean(latencies)) / 1000 * hourly_cost_usd / 3600 * 1000


def cost_basis(engine: str, hardware: str, hourly_cost_usd: float) -> dict[str, Any]:
    """What an SLM cost figure assumes, for the report beside it: the engine whose latencies were measured, the
    machine they were measured on, and the hardware (and price) the time is billed as."""
    return {
        "engine": engine,
        "measured_on": machine_description(),
        "hardware": hardware,
        "hourly_cost_usd": hourly_cost_usd,
        "rule": "mean measured latency per call x the hardware's hourly price",
    }


def describe_cost_basis(basis: dict[str, Any]) -> str:
    """One line for a report: 'SLM cost: transformers-eager, measured on ..., billed as cpu-2-cores at $0.10/h'."""
    return (
        f"SLM cost: {basis['engine']}, measured on {basis['measured_on']}, billed as {basis['hardware']} at "
        f"${basis['hourly_cost_usd']:g}/h"
    )


def latency_p50(latencies_ms: Iterable[float]) -> float:
    """Median latency in ms; 0.0 when there are none (keeps the JSON outputs free of NaN)."""
    return latency_percentile(latencies_ms, 50)


def latency_percentile(latencies_ms: Iterable[float], percentile: float) -> float:
    """A latency percentile in ms (linear interpolation); 0.0 when there are none."""
    latencies = list(latencies_ms)
    return float(np.percentile(latencies, percentile)) if latencies else 0.0
