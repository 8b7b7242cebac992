"""The promotion gate of S6: when does a freshly trained challenger replace the cluster's champion?

A challenger is promoted only if, on the primary metric of the cluster and the same fresh held-out calls,

1. it reaches the floor relative to the LLM: ``challenger >= floor_vs_llm × llm``;
2. it beats the champion by the margin: ``challenger > champion + min_gain_over_champion`` (with no champion yet,
   it must beat the base SLM: ``challenger > base + min_gain_over_base``);
3. it does not regress on the cluster's fixed regression set: ``challenger_regression >= champion_regression −
   max_regression`` (skipped when there is no champion or no regression set).

Otherwise it stays ``challenger``; the reason lists every check with its figures either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.core.config import StepConfig


class PromotionPolicy(StepConfig):
    floor_vs_llm: float = 0.30  # share of the LLM's score the challenger must reach
    min_gain_over_champion: float = 0.05  # margin over the current champion
    min_gain_over_base: float = 0.0  # margin over the base SLM when the cluster has no champion yet
    max_regression: float = 0.0  # allowed drop vs the champion on the fixed regression set


@dataclass(frozen=True)
class GateScores:
    """Primary-metric scores of one cluster; ``None`` where a system was not measured."""

    llm: float
    challenger: float
    champion: float | None = None
    base: float | None = None
    challenger_regression: float | None = None
    champion_regression: float | None = None


@dataclass
class PromotionDecision:
    promote: bool
    reason: str
    checks: dict[str, bool] = field(default_factory=dict)


def decide_promotion(scores: GateScores, policy: PromotionPolicy, metric: str = "primary metric") -> PromotionDecision:
    checks: dict[str, bool] = {}
    notes: list[str] = []
    floor = policy.floor_vs_llm * scores.llm
    checks["floor_vs_llm"] = scores.challenger >= floor
    notes.append(
        f"{metric} {scores.challenger:.3f} {'≥' if checks['floor_vs_llm'] else '<'} "
        f"{policy.floor_vs_llm:.2f} × LLM {scores.llm:.3f} = {floor:.3f}"
    )
    if scores.champion is not None:
        bar = scores.champion + policy.min_gain_over_champion
        checks["beats_champion"] = scores.challenger > bar
        notes.append(
            f"{'>' if checks['beats_champion'] else '≤'} champion {scores.champion:.3f} + "
            f"{policy.min_gain_over_champion:.3f} = {bar:.3f}"
        )
    else:
        bar = (scores.base or 0.0) + policy.min_gain_over_base
        checks["beats_base"] = scores.challenger > bar
        notes.append(
            f"no champion yet; {'>' if checks['beats_base'] else '≤'} base {scores.base or 0.0:.3f} + "
            f"{policy.min_gain_over_base:.3f} = {bar:.3f}"
        )
    if (
        scores.champion is not None
        and scores.challenger_regression is not None
        and scores.champion_regression is not None
    ):
        allowed = scores.champion_regression - policy.max_regression
        checks["no_regression"] = scores.challenger_regression >= allowed
        notes.append(
            f"regression set {scores.challenger_regression:.3f} "
            f"{'≥' if checks['no_regression'] else '<'} champion {scores.champion_regression:.3f} − "
            f"{policy.max_regression:.3f}"
        )
    promote = all(checks.values())
    failed = [name for name, passed in checks.items() if not passed]
    head = "promoted" if promote else f"not promoted ({', '.join(failed)})"
    return PromotionDecision(promote, f"{head}: " + "; ".join(notes), checks)
