import pytest

from components.evaluate.learning_curve import CurvePoint, fit_learning_curve


def points_on(ceiling: float, half: float, sizes=(10, 20, 40, 80)) -> list[CurvePoint]:
    return [CurvePoint(n, ceiling * n / (n + half)) for n in sizes]


def test_a_curve_through_exact_points_recovers_its_ceiling_and_the_calls_for_the_target():
    fit = fit_learning_curve(points_on(0.95, 40), n_test=2000, target=0.855)
    assert fit.ceiling == pytest.approx(0.95, abs=0.02)
    # 40 * 0.855 / (0.95 - 0.855) = 360 calls
    assert fit.calls_for_target == pytest.approx(360, rel=0.15)
    low, high = fit.calls_for_target_ci95
    assert low <= fit.calls_for_target <= high
    assert fit.reachable and "training calls" in fit.verdict


def test_a_ceiling_clearly_below_the_target_is_not_reachable():
    fit = fit_learning_curve(points_on(0.4, 5), n_test=500, target=0.9)
    assert fit.reachable is False
    assert fit.calls_for_target is None
    assert fit.ceiling_ci95[1] < 0.9
    assert fit.verdict.startswith("not reachable with this base model")


def test_few_held_out_calls_widen_the_interval():
    narrow = fit_learning_curve(points_on(0.95, 40), n_test=2000, target=0.855)
    wide = fit_learning_curve(points_on(0.95, 40), n_test=20, target=0.855)
    assert (wide.ceiling_ci95[1] - wide.ceiling_ci95[0]) > 2 * (narrow.ceiling_ci95[1] - narrow.ceiling_ci95[0])


def test_fewer_than_three_sizes_give_no_curve():
    fit = fit_learning_curve(points_on(0.9, 10, sizes=(10, 20)), n_test=50, target=0.8)
    assert fit.ceiling is None and fit.reachable is None
    assert "fewer than 3" in fit.verdict


def test_shares_are_seeded_and_nested_and_the_full_share_is_never_retrained():
    from components.evaluate.learning_curve import training_subsets

    subsets = training_subsets(list(range(40)), [1.0, 0.25, 0.5], seed=3)
    assert [(f, len(s)) for f, s in subsets] == [(0.25, 10), (0.5, 20)]
    assert set(subsets[0][1]) < set(subsets[1][1])  # the smaller share is part of the larger one
    assert subsets == training_subsets(list(range(40)), [0.25, 0.5, 1.0], seed=3)
    assert training_subsets(list(range(40)), [0.25], seed=4)[0][1] != subsets[0][1]


def test_the_curve_trains_each_smaller_share_and_reuses_the_adapter_for_the_full_one():
    from components.evaluate.learning_curve import LearningCurveSettings, learning_curve

    trained: list[int] = []

    def train_and_score(subset):
        trained.append(len(subset))
        return CurvePoint(len(subset), 0.95 * len(subset) / (len(subset) + 40))

    settings = LearningCurveSettings(enabled=True, fractions=[0.25, 0.5, 1.0])
    curve = learning_curve(list(range(80)), CurvePoint(80, 0.95 * 80 / 120), 2000, 0.855, settings, train_and_score)
    assert trained == [20, 40]
    assert [(p["n_train"], p["fraction"]) for p in curve["points"]] == [(20, 0.25), (40, 0.5), (80, 1.0)]
    assert curve["reachable"] and curve["ceiling"] == pytest.approx(0.95, abs=0.03) and curve["verdict"]


def test_fractions_outside_zero_to_one_are_an_error():
    from components.evaluate.learning_curve import LearningCurveSettings

    with pytest.raises(ValueError, match="fractions"):
        LearningCurveSettings(fractions=[0.5, 1.5])
    assert LearningCurveSettings(fractions=[1.0, 0.5, 0.5, 0.25]).fractions == [0.25, 0.5, 1.0]


def test_below_parity_reads_the_primary_metric_against_the_bar():
    from components.evaluate.learning_curve import below_parity

    entry = {"primary_metric": "m", "parity_bar": 0.9, "scores": {"slm_finetuned": {"m": 0.5}}}
    assert below_parity(entry)
    assert not below_parity({**entry, "scores": {"slm_finetuned": {"m": 0.9}}})
