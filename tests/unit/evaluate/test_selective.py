"""Selective parity (components/evaluate/selective.py): calibrator, threshold, cross-fitting, and the gate's
``selective`` mode on out-of-fold figures. Pure numpy on tiny inline data."""

import math

import numpy as np
import pytest

from components.evaluate.promotion import GateScores, PromotionPolicy, SelectiveScores, decide_promotion
from components.evaluate.selective import (
    Calibrator,
    calls_that_peek,
    cross_fit,
    cross_fit_thresholds,
    feature_matrix,
    fit_calibrator,
    fit_threshold,
    risk_coverage,
    selective_figures,
    wilson_interval,
)
from components.slm.confidence import FEATURES


def test_the_threshold_is_the_lowest_confidence_whose_accepted_calls_reach_the_target():
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 0, 1, 1, 0], dtype=bool)
    # top-2: 1.0, top-3: 0.67, top-4: 0.75, top-5: 0.8, top-6: 0.67
    assert fit_threshold(confidence, correct, 0.8) == 0.5  # the lowest, not the first from the top that fails
    assert fit_threshold(confidence, correct, 0.95) == 0.8
    assert fit_threshold(confidence, ~correct, 0.9) == math.inf  # nothing reaches it: accept nothing
    # Ties are accepted together: a threshold cannot split them.
    assert fit_threshold(np.array([0.9, 0.5, 0.5]), np.array([1, 1, 0], dtype=bool), 0.9) == 0.9


def test_the_calibrator_learns_which_way_confidence_points_and_applies_on_raw_features():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(80, len(FEATURES)))
    correct = matrix[:, 0] + 0.3 * rng.normal(size=80) > 0
    calibrator = fit_calibrator(matrix, correct)
    assert calibrator.coefficients[0] > 0 and abs(calibrator.coefficients[0]) > abs(calibrator.coefficients[1])
    predicted = calibrator.predict(matrix)
    assert predicted[correct].mean() > 0.7 > 0.3 > predicted[~correct].mean()
    # What ships is a plain JSON mapping a router applies with one dot product.
    again = Calibrator.from_dict(calibrator.to_dict())
    assert np.allclose(again.predict(matrix), predicted)
    assert set(calibrator.to_dict()) == {"features", "coefficients", "intercept"}
    # One class only: a constant at its rate.
    constant = fit_calibrator(matrix[:5], np.ones(5, dtype=bool))
    assert np.allclose(constant.predict(matrix), 0.99)


def test_answers_without_confidence_give_no_features():
    assert feature_matrix([{"mean_logprob": -0.1}, None]) is None and feature_matrix([]) is None
    matrix = feature_matrix([dict.fromkeys(FEATURES, -float("inf")), dict.fromkeys(FEATURES, -0.5)])
    assert matrix.shape == (2, len(FEATURES)) and np.isfinite(matrix).all() and matrix.max() == -0.5


def separable(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A cluster whose confidence says which calls are right: the top 60 % right, the rest mostly wrong."""
    rng = np.random.default_rng(seed)
    score = np.sort(rng.random(n))[::-1]
    correct = np.arange(n) < int(0.6 * n)
    correct[int(0.6 * n) :: 3] = True  # some lucky low-confidence answers
    matrix = np.column_stack([score, score**2, score + 0.01 * rng.normal(size=n), np.zeros(n)])
    order = rng.permutation(n)
    return matrix[order], correct[order]


def test_cross_fitting_never_tunes_a_call_on_itself_and_a_peeking_threshold_is_caught():
    matrix, correct = separable(30)

    def peeking(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        calibrator = fit_calibrator(features, labels)
        return np.full(len(labels), fit_threshold(calibrator.predict(features), labels, 0.9))

    assert calls_that_peek(lambda f, y: cross_fit_thresholds(f, y, 0.9, folds=5), matrix, correct) == []
    assert calls_that_peek(peeking, matrix, correct) != []


def test_out_of_fold_figures_on_a_cluster_whose_confidence_tells_right_from_wrong():
    matrix, correct = separable(100)
    figures = selective_figures(matrix, correct, target=0.9, folds=5)
    assert correct.mean() < 0.9  # below parity over all calls...
    assert figures["accepted_accuracy"] >= 0.9 and 0.4 <= figures["coverage"] <= 0.8  # ...at parity on most
    assert figures["accepted_calls"] + figures["deferred_calls"] == 100
    low, high = figures["accepted_interval"]
    assert low < figures["accepted_accuracy"] <= high
    assert figures["threshold"] is not None and 0 < figures["threshold"] < 1
    curve = figures["risk_coverage"]
    assert len(curve) == 100 and curve[-1]["coverage"] == 1.0
    assert curve[-1]["risk"] == pytest.approx(1 - correct.mean()) and curve[0]["risk"] == 0.0
    # The figures are those of the cross-fit: each call accepted by the threshold fitted without it.
    fitted = cross_fit(matrix, correct, 0.9, 5)
    assert figures["accepted_calls"] == int(fitted.accepted.sum())


def test_risk_coverage_and_wilson():
    curve = risk_coverage(np.array([0.2, 0.9, 0.5]), np.array([0, 1, 0], dtype=bool))
    assert [p["coverage"] for p in curve] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [p["risk"] for p in curve] == pytest.approx([0.0, 0.5, 2 / 3])
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4) and wilson_interval(0, 0) is None


# ---- the gate's modes -------------------------------------------------------------------------------------------


def gate(challenger: float, selective: SelectiveScores | None, base: float = 0.1, **policy) -> object:
    return decide_promotion(
        GateScores(llm=1.0, challenger=challenger, n_test=100, base=base, selective=selective),
        PromotionPolicy(**policy),
        "full_call_match",
    )


def test_the_gate_has_three_modes_on_selective_and_shadow():
    sure = SelectiveScores(accepted_accuracy=0.95, accepted_calls=40, coverage=0.4)
    promoted = gate(0.92, sure)
    assert promoted.promote and promoted.mode == "on" and promoted.selective_checks is None
    selective = gate(0.6, sure)
    assert not selective.promote and selective.mode == "selective"
    assert selective.selective_checks == {
        "enough_accepted_calls": True,
        "accepted_parity": True,
        "min_coverage": True,
        "beats_base": True,
    }
    assert "Selective: the SLM answers the calls it is sure of" in selective.reason
    no_confidence = gate(0.6, None)
    assert no_confidence.mode == "shadow" and no_confidence.selective_checks is None
    for figures, failed, policy in (
        (SelectiveScores(0.85, 40, 0.4), "accepted_parity", {}),
        (SelectiveScores(0.95, 19, 0.4), "enough_accepted_calls", {}),
        (SelectiveScores(0.95, 40, 0.15), "min_coverage", {}),
        (SelectiveScores(None, 0, 0.0), "accepted_parity", {}),
        (SelectiveScores(0.95, 40, 0.4), "min_coverage", {"min_coverage": 0.5}),
    ):
        decision = gate(0.6, figures, **policy)
        assert decision.mode == "shadow" and not decision.selective_checks[failed], failed
        assert f"Not selective ({failed}" in decision.reason or failed in decision.reason
    # The SLM must still beat its base over all calls.
    below_base = gate(0.6, sure, base=0.7)
    assert below_base.mode == "shadow" and not below_base.selective_checks["beats_base"]
    # ...and, in a refresh, its champion and the regression set.
    refresh = decide_promotion(
        GateScores(llm=1.0, challenger=0.6, n_test=100, champion=0.58, selective=sure),
        PromotionPolicy(),
    )
    assert refresh.mode == "shadow" and not refresh.selective_checks["beats_champion"]


def test_a_confidence_unrelated_to_correctness_almost_never_makes_a_cluster_selective():
    """Permutation test: a cluster at 0.5 accuracy whose confidence features are noise. Over 200 seeds the gate
    (default policy, out-of-fold figures) makes it selective in fewer than 5 %; the same gate fed in-sample
    figures (threshold tuned on the scored calls) under a lax policy is fooled far more often than the cross-fit."""
    lax = PromotionPolicy(min_test_calls=1, min_coverage=0.0)
    selective, peek_fooled, cross_fit_fooled = 0, 0, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        correct = rng.random(60) < 0.5
        matrix = rng.normal(size=(60, len(FEATURES)))
        figures = selective_figures(matrix, correct, target=0.9, folds=5, seed=seed)
        scores = SelectiveScores(figures["accepted_accuracy"], figures["accepted_calls"], figures["coverage"])
        gate_scores = GateScores(llm=1.0, challenger=float(correct.mean()), n_test=60, base=0.0, selective=scores)
        selective += decide_promotion(gate_scores, PromotionPolicy()).mode == "selective"
        cross_fit_fooled += decide_promotion(gate_scores, lax).mode == "selective"
        calibrator = fit_calibrator(matrix, correct)
        confidence = calibrator.predict(matrix)
        accepted = confidence >= fit_threshold(confidence, correct, 0.9)
        in_sample = SelectiveScores(
            float(correct[accepted].mean()) if accepted.any() else None, int(accepted.sum()), float(accepted.mean())
        )
        peek = GateScores(llm=1.0, challenger=float(correct.mean()), n_test=60, base=0.0, selective=in_sample)
        peek_fooled += decide_promotion(peek, lax).mode == "selective"
    assert selective / 200 < 0.05
    assert peek_fooled > 0.5 * 200 and cross_fit_fooled < peek_fooled / 2
    print(f"selective {selective}/200; lax policy: peeking {peek_fooled}/200, cross-fit {cross_fit_fooled}/200")
