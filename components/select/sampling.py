"""How many held-out calls S4 spends per cluster (issue 30: S4 spends little).

With one admissible candidate there is nothing to choose: S4 selects it without a benchmark and reports its
zero-shot score on a sample (``select.sample_calls``), or on none once S4's time budget is spent (the cluster is
still selected: the budget only cost the report); S6 answers the rest of the held-out calls with the base
itself (components/evaluate/base_answers.py). With several, every candidate answers the sample first, and only
the clusters where no candidate leads clearly (its 95 % Wilson interval on the primary metric above every other
candidate's) are benchmarked on all their held-out calls.
"""

from __future__ import annotations

from typing import Any

from components.scoring.intervals import wilson_interval


def sample_size(n_test: int, sample_calls: int | None) -> int:
    """The held-out calls answered first: ``sample_calls`` of them (all when null or when there are fewer)."""
    return n_test if sample_calls is None else min(n_test, sample_calls)


def leads_clearly(rows: list[dict[str, Any]], metric: str) -> bool:
    """Whether one row's primary metric is clearly above every other's: its interval's lower bound above their
    upper bounds (the metric read as a share of the ``n_test`` calls). A single row leads by default."""
    if len(rows) <= 1:
        return True
    ranked = sorted(rows, key=lambda row: row["scores"][metric], reverse=True)

    def interval(row: dict[str, Any]) -> list[float]:
        n = row["n_test"]
        return wilson_interval(round(row["scores"][metric] * n), n) or [0.0, 1.0]

    best_low = interval(ranked[0])[0]
    return all(best_low > interval(other)[1] for other in ranked[1:])


def unsampled_note(n_test: int, budget_reason: str) -> str:
    """The reason of a cluster S4's budget reached before its sample, when there was nothing to choose between."""
    return (
        f"the only admissible candidate, selected without a benchmark; no zero-shot sample ({budget_reason}); S6 "
        f"scores the base on all {n_test} held-out calls"
    )


def sampling_note(n_scored: int, n_test: int, candidates: int, decided_early: bool) -> str | None:
    """What the cluster's report says about the calls S4 scored; None when it scored them all."""
    if n_scored >= n_test:
        return None
    if candidates <= 1:
        return (
            f"the only admissible candidate, selected without a benchmark; its zero-shot score is on a sample of "
            f"{n_scored} of the {n_test} held-out calls (S6 scores the base on all of them)"
        )
    if decided_early:
        return f"one candidate led clearly on a sample of {n_scored} of the {n_test} held-out calls"
    return None
