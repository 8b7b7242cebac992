"""Drift of the task mix between refreshes: population stability index (PSI) of the cluster mix and the change in
the share of outliers. Pure functions on cluster ids; the refresh flow reports them and compares with thresholds.

PSI = Σ (current_i − reference_i) · ln(current_i / reference_i) over the bins (clusters, outliers included), with
empty bins floored at ``epsilon`` so a cluster that appears or vanishes counts without dividing by zero. The usual
reading: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 large shift.

When either mix is empty (the first refresh has no reference; a batch may bring no calls) there is nothing to
compare: PSI is None and the report says "not measurable", which is neither drift nor no drift. A 0.0 there would
read as "stable" and hide that the check did not run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from components.core.config import StepConfig

OUTLIER_BIN = "-1"


class DriftConfig(StepConfig):
    psi_threshold: float = 0.2  # cluster mix drifted when PSI exceeds this
    outlier_share_increase: float = 0.10  # outliers drifted when their share grew by more than this (absolute)
    epsilon: float = 1.0e-4  # share given to an empty bin


def cluster_mix(cluster_ids: Iterable[int]) -> dict[str, float]:
    """Share of each cluster (keys are cluster ids as text, outliers ``"-1"``), summing to 1; empty input -> {}."""
    counts = Counter(str(int(c)) for c in cluster_ids)
    total = sum(counts.values())
    return {key: count / total for key, count in sorted(counts.items())} if total else {}


def population_stability_index(
    reference: Mapping[str, float], current: Mapping[str, float], epsilon: float = 1.0e-4
) -> float | None:
    """PSI between two mixes over the union of their bins; None when either is empty (not measurable)."""
    if not reference or not current:
        return None
    psi = 0.0
    for key in set(reference) | set(current):
        expected, actual = max(reference.get(key, 0.0), epsilon), max(current.get(key, 0.0), epsilon)
        psi += (actual - expected) * math.log(actual / expected)
    return float(psi)


@dataclass
class DriftReport:
    psi: float | None  # None: not measurable
    outlier_share_reference: float | None  # None: that mix is empty
    outlier_share_current: float | None
    mix_drifted: bool | None  # None: not measurable, neither drifted nor steady
    outliers_drifted: bool | None
    reasons: list[str] = field(default_factory=list)
    not_measurable: str | None = None  # why there is nothing to compare, when there is not

    @property
    def drifted(self) -> bool | None:
        if self.not_measurable is not None:
            return None
        return bool(self.mix_drifted or self.outliers_drifted)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


def detect_drift(reference: Mapping[str, float], current: Mapping[str, float], cfg: DriftConfig) -> DriftReport:
    """Compare the new batch's mix with the reference mix (the previous refresh's) against the thresholds."""
    psi = population_stability_index(reference, current, cfg.epsilon)
    if psi is None:
        # The outlier shift needs both mixes too: neither check ran.
        return DriftReport(
            None,
            reference.get(OUTLIER_BIN, 0.0) if reference else None,
            current.get(OUTLIER_BIN, 0.0) if current else None,
            None,
            None,
            not_measurable="no reference mix yet (first refresh)" if not reference else "the batch has no calls",
        )
    outliers_before, outliers_now = reference.get(OUTLIER_BIN, 0.0), current.get(OUTLIER_BIN, 0.0)
    mix_drifted = psi > cfg.psi_threshold
    outliers_drifted = outliers_now - outliers_before > cfg.outlier_share_increase
    reasons = []
    if mix_drifted:
        reasons.append(f"cluster mix PSI {psi:.3f} > {cfg.psi_threshold:.3f}")
    if outliers_drifted:
        reasons.append(
            f"outlier share {outliers_before:.1%} -> {outliers_now:.1%}, up more than {cfg.outlier_share_increase:.1%}"
        )
    return DriftReport(psi, outliers_before, outliers_now, mix_drifted, outliers_drifted, reasons)


def describe_drift(report: Mapping[str, Any]) -> str:
    """One line for a drift report (``DriftReport.to_dict()``), the same wherever it is shown: a PSI that could not
    be measured reads "not measurable", never as a figure or as "no drift"."""
    if report.get("not_measurable"):
        return f"cluster-mix PSI not measurable ({report['not_measurable']})"
    verdict = " -> drifted: " + "; ".join(report["reasons"]) if report["drifted"] else " (no drift)"
    return f"cluster-mix PSI {report['psi']:.3f}, outliers {report['outlier_share_current']:.1%}{verdict}"
