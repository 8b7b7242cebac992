"""How far a cluster's SLM is from parity, and what it would take: a learning curve over training-set sizes.

Quality is measured at a few fractions of a cluster's training calls; a saturating curve
``q(n) = ceiling * n / (n + half)`` (the Michaelis-Menten form: 0 at no data, ``ceiling`` with unlimited data, half
of it at ``half`` calls) is fitted to the points, and the calls needed for ``target`` are read off it. The spread comes
from the points themselves: each one is a proportion on ``n_test`` held-out calls, so the fit is repeated on points
resampled from their binomial distributions (a parametric bootstrap). When the upper bound of the fitted ceiling stays
below the target, more data of this kind will not get there: "not reachable with this base model".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_DRAWS = 400
MAX_CALLS_REPORTED = 1_000_000  # beyond this the estimate says nothing useful; reported as unbounded (None)


@dataclass(frozen=True)
class CurvePoint:
    n_train: int  # training calls the model saw
    score: float  # its primary metric on the held-out calls


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
