"""How far a cluster's SLM is from parity, and what it would take: a learning curve over training-set sizes.

Quality is measured at a few fractions of a cluster's training calls; a saturating curve
``q(n) = ceiling * n / (n + half)`` (the Michaelis-Menten form: 0 at no data, ``ceiling`` with unlimited data, half
of it at ``half`` calls) is fitted to the points, and the calls needed for ``target`` are read off it. The spread comes
from the points themselves: each one is a proportion on ``n_test`` held-out calls, so the fit is repeated on points
resampled from their binomial distributions (a parametric bootstrap). When the upper bound of the fitted ceiling stays
below the target, more data of this kind will not get there: "not reachable with this base model".

:func:`learning_curve` takes the training and scoring as a function (S6 passes S5's own ``finetune`` and its
generation), so a point is trained exactly as the cluster's adapter was, on a seeded nested share of its calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import field_validator

from components.core.config import StepConfig

BOOTSTRAP_DRAWS = 400
MAX_CALLS_REPORTED = 1_000_000  # beyond this the estimate says nothing useful; reported as unbounded (None)


class LearningCurveSettings(StepConfig):
    """S6's learning curve of each converted cluster below parity. Each fraction under 1.0 is one more S5 training
    run and one more pass over the held-out calls (on the 2-core CPU demo about as long as S5 and S6 of that
    cluster again), hence off by default; the 1.0 point is the cluster's trained adapter, never retrained."""

    enabled: bool = False
    fractions: list[float] = [0.25, 0.5, 1.0]  # shares of the cluster's training calls; at least 3 for a fit
    output_dir: str = "models/learning_curve"  # one adapter per cluster and training size
    seed: int = 42  # which calls a share keeps (each smaller share is part of the larger ones)

    @field_validator("fractions")
    @classmethod
    def _shares(cls, fractions: list[float]) -> list[float]:
        if any(not 0.0 < f <= 1.0 for f in fractions):
            raise ValueError(f"learning_curve.fractions must lie in (0, 1]: {fractions}")
        return sorted(set(fractions))


@dataclass(frozen=True)
class CurvePoint:
    n_train: int  # training calls the model saw
    score: float  # its primary metric on the held-out calls
    fraction: float | None = None  # of the cluster's training calls


@dataclass(frozen=True)
class CurveFit:
    points: list[CurvePoint]
    target: float  # the score parity needs (parity share × the LLM's score)
    ceiling: float | None  # fitted score with unlimited calls of this kind
    ceiling_ci95: list[float] | None
    calls_for_target: int | None  # training calls the fitted curve needs to reach the target
    calls_for_target_ci95: list[float | None] | None
    reachable: bool | None  # False: even the ceiling's upper bound is below the target; None: too few points
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def _fit(n: np.ndarray, q: np.ndarray) -> tuple[float, float] | None:
    """Least-squares (ceiling, half) of the saturating curve, both kept positive and the ceiling at most 1."""
    from scipy.optimize import curve_fit

    def curve(x, ceiling, half):
        return ceiling * x / (x + half)

    if not np.any(q > 0):
        return 0.0, 1.0
    try:
        (ceiling, half), _ = curve_fit(
            curve, n, q, p0=(max(q.max(), 1e-3), max(float(np.median(n)), 1.0)), bounds=([0.0, 1e-6], [1.0, 1e7])
        )
    except (RuntimeError, ValueError):  # no convergence on degenerate points
        return None
    return float(ceiling), float(half)


def _calls_needed(ceiling: float, half: float, target: float) -> float:
    """Inverse of the curve at ``target``: ``half * target / (ceiling - target)``; inf when the ceiling is below."""
    if target <= 0:
        return 0.0
    if ceiling <= target:
        return float("inf")
    return half * target / (ceiling - target)


def fit_learning_curve(
    points: Sequence[CurvePoint], n_test: int, target: float, seed: int = 0, draws: int = BOOTSTRAP_DRAWS
) -> CurveFit:
    """Fit the curve to at least three training sizes, with 95 % intervals from a parametric bootstrap."""
    points = sorted(points, key=lambda p: p.n_train)
    if len({p.n_train for p in points}) < 3 or n_test <= 0:
        return CurveFit(list(points), target, None, None, None, None, None, "fewer than 3 training sizes: no curve")
    n = np.array([p.n_train for p in points], dtype=float)
    q = np.array([p.score for p in points], dtype=float)
    fitted = _fit(n, q)
    if fitted is None:
        return CurveFit(list(points), target, None, None, None, None, None, "the curve did not fit these points")
    ceiling, half = fitted
    rng = np.random.default_rng(seed)
    ceilings, needs = [], []
    for _ in range(draws):
        resampled = rng.binomial(n_test, np.clip(q, 0.0, 1.0)) / n_test
        refit = _fit(n, resampled)
        if refit is not None:
            ceilings.append(refit[0])
            # an unreachable draw counts as more calls than any bound reported (percentiles need finite values)
            needs.append(min(_calls_needed(refit[0], refit[1], target), 10.0 * MAX_CALLS_REPORTED))
    ceiling_ci = [float(np.percentile(ceilings, 2.5)), float(np.percentile(ceilings, 97.5))] if ceilings else None
    need = _calls_needed(ceiling, half, target)

    def bounded(value: float) -> float | None:
        return None if not np.isfinite(value) or value > MAX_CALLS_REPORTED else float(round(value))

    need_ci = [bounded(float(np.percentile(needs, 2.5))), bounded(float(np.percentile(needs, 97.5)))] if needs else None
    reachable = ceiling_ci is None or ceiling_ci[1] >= target
    if not reachable:
        verdict = (
            f"not reachable with this base model: the fitted ceiling {ceiling:.2f} "
            f"[{ceiling_ci[0]:.2f}-{ceiling_ci[1]:.2f}] stays below the target {target:.2f}"
        )
    elif bounded(need) is None:
        verdict = f"the point estimate never reaches {target:.2f} (ceiling {ceiling:.2f}); its upper bound does"
    else:
        high = need_ci[1] if need_ci else None
        verdict = (
            f"~{int(round(need))} training calls for {target:.2f} "
            f"(95 % interval {int(need_ci[0]) if need_ci and need_ci[0] is not None else '?'}-"
            f"{int(high) if high is not None else 'unbounded'})"
        )
    return CurveFit(list(points), target, ceiling, ceiling_ci, bounded(need), need_ci, reachable, verdict)


T = TypeVar("T")


def training_subsets(records: Sequence[T], fractions: Sequence[float], seed: int = 42) -> list[tuple[float, list[T]]]:
    """One seeded, nested share of ``records`` per fraction under 1.0 (each smaller share is part of the larger
    ones, so the points differ only by the calls added), at least one record each; 1.0 is the full set itself."""
    order = list(records)
    random.Random(seed).shuffle(order)
    return [(f, order[: max(1, round(f * len(order)))]) for f in sorted(set(fractions)) if f < 1.0]


def below_parity(entry: dict[str, Any]) -> bool:
    """The cluster's fine-tuned SLM misses the parity bar on its primary metric (the curve says how far it is)."""
    return entry["scores"]["slm_finetuned"][entry["primary_metric"]] < entry["parity_bar"]


def learning_curve(
    train_records: Sequence[T],
    full_point: CurvePoint,
    n_test: int,
    target: float,
    settings: LearningCurveSettings,
    train_and_score: Callable[[list[T]], CurvePoint],
) -> dict[str, Any]:
    """Train and score at each share of ``train_records`` under 1.0, add the trained adapter's own point
    (``full_point``, fraction 1.0) and fit the curve: the ``learning_curve`` of the cluster's evaluation entry."""
    points = []
    for fraction, subset in training_subsets(train_records, settings.fractions, settings.seed):
        point = train_and_score(subset)
        points.append(CurvePoint(point.n_train, point.score, fraction))
    points.append(CurvePoint(full_point.n_train, full_point.score, 1.0))
    return fit_learning_curve(points, n_test, target, seed=settings.seed).as_dict()
