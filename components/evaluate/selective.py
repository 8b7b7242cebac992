"""Selective parity: the SLM answers the held-out calls it is sure of, the LLM the rest.

Each fine-tuned SLM answer carries confidence features from its own decode (components/slm/confidence.py). Per
cluster, a calibrator (logistic regression on those features) predicts "the SLM's answer matches the LLM's" (the
full-call match), and a threshold on the calibrated confidence picks the calls the SLM keeps: the **lowest**
confidence at which the accepted calls' accuracy, on the calls it is fitted on, reaches the target (``parity`` × the
LLM). Nothing is tuned on a call it is scored on: the held-out calls are cross-fitted in ``folds`` (a call's
calibrator and threshold come from the other folds), so coverage, accepted accuracy and the risk-coverage curve are
out-of-fold figures. The calibrator and threshold that ship are fitted on all held-out calls.

Pure numpy (scikit-learn for the logistic fit); :func:`calls_that_peek` checks the out-of-fold property of any
threshold function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The calibrator and the gate a router applies live with the features (components/slm/confidence.py), so the gate
# fitted here and the router that serves it score an answer by one formula.
from components.scoring.intervals import wilson_interval
from components.slm.confidence import FEATURES, Calibrator, feature_matrix  # noqa: F401 - re-exported


def fit_calibrator(matrix: np.ndarray, correct: np.ndarray, features: Sequence[str] = FEATURES) -> Calibrator:
    """Logistic regression of ``correct`` on the (standardised) features, its coefficients mapped back to the raw
    features so a router applies them with one dot product. One class only: a constant at that class's rate."""
    matrix, correct = np.asarray(matrix, dtype=float), np.asarray(correct, dtype=bool)
    if correct.all() or not correct.any():
        rate = min(max(float(correct.mean()) if len(correct) else 0.0, 0.01), 0.99)
        return Calibrator(tuple(features), tuple(0.0 for _ in features), math.log(rate / (1 - rate)))
    from sklearn.linear_model import LogisticRegression

    mean = matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, max_iter=1000).fit((matrix - mean) / scale, correct)
    coefficients = model.coef_[0] / scale
    intercept = float(model.intercept_[0] - np.sum(model.coef_[0] * mean / scale))
    return Calibrator(tuple(features), tuple(float(c) for c in coefficients), intercept)


def fit_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest confidence ``t`` such that the calls with confidence ≥ ``t`` are right at a rate ≥ ``target``;
    ``inf`` (accept nothing) when no ``t`` reaches it."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if len(confidence) == 0:
        return math.inf
    order = np.argsort(-confidence, kind="stable")
    ranked, hits = confidence[order], np.cumsum(correct[order])
    accepted = np.arange(1, len(ranked) + 1)
    # Only the last call of a run of ties is a threshold: "≥ t" accepts the whole run.
    ends = np.append(ranked[1:] != ranked[:-1], True)
    meets = ends & (hits / accepted >= target - 1e-12)
    if not meets.any():
        return math.inf
    return float(ranked[np.flatnonzero(meets)[-1]])


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Each call's fold, seeded and independent of the labels (so a call's label never moves a fold)."""
    return np.random.default_rng(seed).permutation(n) % max(1, min(folds, n))


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold figures: each call's confidence and the threshold applied to it, both fitted without it."""

    confidence: np.ndarray
    threshold: np.ndarray
    correct: np.ndarray

    @property
    def accepted(self) -> np.ndarray:
        return self.confidence >= self.threshold


def cross_fit(matrix: np.ndarray, correct: np.ndarray, target: float, folds: int = 5, seed: int = 0) -> CrossFit:
    """For each fold: fit the calibrator and its threshold on the other folds, apply both to the fold's calls."""
    matrix, correct = np.asarray(matrix, dtype=float), np.asarray(correct, dtype=bool)
    n = len(correct)
    assigned = fold_of(n, folds, seed)
    confidence, threshold = np.zeros(n), np.full(n, math.inf)
    if n < 2:
        return CrossFit(confidence, threshold, correct)
    for fold in np.unique(assigned):
        test, train = assigned == fold, assigned != fold
        calibrator = fit_calibrator(matrix[train], correct[train])
        threshold[test] = fit_threshold(calibrator.predict(matrix[train]), correct[train], target)
        confidence[test] = calibrator.predict(matrix[test])
    return CrossFit(confidence, threshold, correct)


def cross_fit_thresholds(matrix: np.ndarray, correct: np.ndarray, target: float, folds: int = 5) -> np.ndarray:
    """The threshold applied to each call by :func:`cross_fit` (what :func:`calls_that_peek` checks)."""
    return cross_fit(matrix, correct, target, folds).threshold


ThresholdFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, labels) -> threshold per call


def calls_that_peek(thresholds: ThresholdFunction, matrix: np.ndarray, correct: np.ndarray) -> list[int]:
    """The calls whose applied threshold changes when their own label is flipped: a threshold tuned on the call it
    is scored on. Empty for an out-of-fold fit."""
    correct = np.asarray(correct, dtype=bool)
    applied = np.asarray(thresholds(matrix, correct))
    peeking = []
    for index in range(len(correct)):
        flipped = correct.copy()
        flipped[index] = not flipped[index]
        if not np.isclose(np.asarray(thresholds(matrix, flipped))[index], applied[index], equal_nan=True):
            peeking.append(index)
    return peeking


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> list[dict[str, float]]:
    """The risk-coverage curve of a confidence: accepting the k most confident calls, k = 1..n, the share accepted
    (coverage) and the share of those that are wrong (risk)."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    n = len(correct)
    return [
        {"coverage": (k + 1) / n, "risk": 1 - float(hits[k]) / (k + 1), "confidence": float(confidence[order][k])}
        for k in range(n)
    ]


def selective_figures(
    matrix: np.ndarray, correct: np.ndarray, target: float, folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """A cluster's selective figures: out-of-fold coverage, accepted accuracy (Wilson interval), accepted and
    deferred calls and risk-coverage curve, with the calibrator and threshold fitted on all calls (what ships)."""
    correct = np.asarray(correct, dtype=bool)
    fitted = cross_fit(matrix, correct, target, folds, seed)
    accepted = fitted.accepted
    n_accepted = int(accepted.sum())
    hits = int(correct[accepted].sum())
    calibrator = fit_calibrator(matrix, correct)
    threshold = fit_threshold(calibrator.predict(matrix), correct, target)
    return {
        "threshold": threshold if math.isfinite(threshold) else None,
        "target": target,
        "folds": int(max(1, min(folds, len(correct)))),
        "coverage": n_accepted / len(correct) if len(correct) else 0.0,
        "accepted_accuracy": hits / n_accepted if n_accepted else None,
        "accepted_interval": wilson_interval(hits, n_accepted),
        "accepted_calls": n_accepted,
        "deferred_calls": int(len(correct) - n_accepted),
        "risk_coverage": risk_coverage(fitted.confidence, correct),
        "calibrator": calibrator.to_dict(),
    }
