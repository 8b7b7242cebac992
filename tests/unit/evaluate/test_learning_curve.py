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
