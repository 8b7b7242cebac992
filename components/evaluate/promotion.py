"""The one promotion gate of S6, for `llm2slm run` and `llm2slm refresh` alike (params section ``promotion``).

The reference is the LLM's logged answer, so the LLM scores 1.0 against itself and parity means agreement. A
fine-tuned SLM (the challenger) becomes its cluster's ``champion`` only if, on the cluster's primary metric and the
same held-out calls,

1. it was measured on enough calls: ``n_test >= min_test_calls`` (a rate on 10 calls spans ±30 points);
2. it reaches parity with the LLM: ``challenger >= parity × llm`` (the point estimate; its interval is reported);
3. it beats the champion by the margin: ``challenger > champion + min_gain_over_champion`` (with no champion yet,
   it must beat the base SLM: ``challenger > base + min_gain_over_base``); where both measured their confidence
   (the refresh), on the share of calls each serves at parity (coverage × at parity), not on raw accuracy;
4. it does not regress on the cluster's fixed regression set: ``challenger_regression >= champion_regression −
   max_regression`` (skipped when there is no champion or no regression set).

Otherwise it stays ``challenger``; the reason lists every check with its figures either way.

**Selective parity** (mode ``selective``): a challenger that fails 1 or 2 may still serve the calls it is sure of
(components/evaluate/selective.py), the LLM the rest, when its out-of-fold figures on the held-out calls show

5. accuracy on the calls it accepts ``>= parity × llm``, on at least ``min_test_calls`` accepted calls;
6. ``coverage >= min_coverage`` (the share of held-out calls it accepts);

and checks 3 and 4 hold. The decision's ``mode`` is the router's: ``on`` (promoted), ``selective`` or ``shadow``.

In production the router audits a share of the calls an ``on`` or ``selective`` SLM keeps and demotes the cluster
to ``shadow`` when the audited calls fail check 5 (:func:`served_at_parity`, the same rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import model_validator

from components.core.config import StepConfig

# Keys of the two gates this one replaced: a params file that still sets them must not pass silently.
RETIRED_KEYS = {
    "floor_vs_llm": "parity",
    "primary_metric_floor_vs_llm": "parity",
}


class PromotionPolicy(StepConfig):
    parity: float = 0.9  # share of the LLM's primary metric the challenger must reach
    min_test_calls: int = 20  # a parity decision needs at least this many held-out calls
    min_gain_over_champion: float = 0.05  # margin over the current champion
    min_gain_over_base: float = 0.0  # margin over the base SLM when the cluster has no champion yet
    max_regression: float = 0.0  # allowed drop vs the champion on the fixed regression set
    min_coverage: float = 0.2  # selective: the SLM accepts at least this share of the held-out calls
    selective_folds: int = 5  # selective: cross-fitting folds over the held-out calls (out-of-fold figures)

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            retired = sorted(set(values) & set(RETIRED_KEYS))
            if retired:
                hints = ", ".join(f"'{key}' -> '{RETIRED_KEYS[key]}'" for key in retired)
                raise ValueError(f"promotion: retired key(s) {hints}; the gate promotes at parity × the LLM")
        return values


@dataclass(frozen=True)
class SelectiveScores:
    """Out-of-fold figures of the SLM answering only the calls its calibrated confidence accepts."""

    accepted_accuracy: float | None
    accepted_calls: int
    coverage: float


@dataclass(frozen=True)
class GateScores:
    """Primary-metric scores of one cluster on ``n_test`` held-out calls; ``None`` where a system was not measured."""

    llm: float
    challenger: float
    n_test: int
    champion: float | None = None
    base: float | None = None
    challenger_regression: float | None = None
    champion_regression: float | None = None
    selective: SelectiveScores | None = None  # None: the answers carry no confidence, no selective mode
    # (challenger, champion): the share of the calls each serves at parity (the refresh's comparison, when both
    # measured their confidence); check 3 then compares these, not raw accuracy
    served_at_parity: tuple[float, float] | None = None


@dataclass
class PromotionDecision:
    promote: bool
    reason: str
    checks: dict[str, bool] = field(default_factory=dict)
    mode: str = "shadow"  # the router's mode: on (promoted), selective, shadow
    selective_checks: dict[str, bool] | None = None


def served_at_parity(accuracy: float | None, calls: int, llm: float, policy: PromotionPolicy) -> dict[str, bool]:
    """The gate's rule on the calls an SLM answers (checks 5): enough of them, right at ``parity`` × the LLM.
    One rule for the gate's out-of-fold accepted calls and the router's audited calls (an audited cluster below it
    is demoted: components/evaluate/demotion.py)."""
    return {
        "enough_accepted_calls": calls >= policy.min_test_calls,
        "accepted_parity": accuracy is not None and accuracy >= policy.parity * llm,
    }


def _selective_checks(
    scores: GateScores, policy: PromotionPolicy, checks: dict[str, bool]
) -> tuple[dict[str, bool], str]:
    """Checks 5 and 6 on the out-of-fold selective figures, with the whole-cluster checks 3 and 4 as they were."""
    selective = scores.selective
    assert selective is not None
    bar = policy.parity * scores.llm
    accuracy = selective.accepted_accuracy
    found = served_at_parity(accuracy, selective.accepted_calls, scores.llm, policy)
    found["min_coverage"] = selective.coverage >= policy.min_coverage
    found |= {name: passed for name, passed in checks.items() if name not in ("enough_test_calls", "parity")}
    shown = f"{accuracy:.3f}" if accuracy is not None else "–"
    note = (
        f"selective (out-of-fold): {selective.accepted_calls} accepted calls "
        f"{'≥' if found['enough_accepted_calls'] else '<'} {policy.min_test_calls}, accepted accuracy {shown} "
        f"{'≥' if found['accepted_parity'] else '<'} {bar:.3f}, coverage {selective.coverage:.2f} "
        f"{'≥' if found['min_coverage'] else '<'} {policy.min_coverage:.2f}"
    )
    return found, note


def decide_promotion(scores: GateScores, policy: PromotionPolicy, metric: str = "primary metric") -> PromotionDecision:
    checks: dict[str, bool] = {}
    notes: list[str] = []
    checks["enough_test_calls"] = scores.n_test >= policy.min_test_calls
    notes.append(
        f"{scores.n_test} held-out calls {'≥' if checks['enough_test_calls'] else '<'} {policy.min_test_calls}"
    )
    bar_llm = policy.parity * scores.llm
    checks["parity"] = scores.challenger >= bar_llm
    notes.append(
        f"{metric} {scores.challenger:.3f} {'≥' if checks['parity'] else '<'} "
        f"{policy.parity:.2f} × LLM {scores.llm:.3f} = {bar_llm:.3f}"
    )
    if scores.champion is not None and scores.served_at_parity is not None:
        mine, theirs = scores.served_at_parity
        bar = theirs + policy.min_gain_over_champion
        checks["beats_champion"] = mine > bar
        notes.append(
            f"calls served at parity {mine:.3f} {'>' if checks['beats_champion'] else '≤'} champion's {theirs:.3f} + "
            f"{policy.min_gain_over_champion:.3f} = {bar:.3f}"
        )
    elif scores.champion is not None:
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
    reason = f"{head}: " + "; ".join(notes)
    if promote:
        return PromotionDecision(True, reason, checks, "on")
    if scores.selective is None:
        return PromotionDecision(False, reason, checks, "shadow")
    selective_checks, note = _selective_checks(scores, policy, checks)
    if all(selective_checks.values()):
        reason += f". Selective: the SLM answers the calls it is sure of, the LLM the rest: {note}"
        return PromotionDecision(False, reason, checks, "selective", selective_checks)
    missed = [name for name, passed in selective_checks.items() if not passed]
    reason += f". Not selective ({', '.join(missed)}): {note}"
    return PromotionDecision(False, reason, checks, "shadow", selective_checks)
