"""Metrics against hand-computed values, edge cases, and the half-life MLE on synthetic data."""

import math

import numpy as np
import pytest

from synclearn.eval import metrics

# Three tasks. Row i: accuracies after training on task i; column j: task tested.
R3 = [
    [0.90, 0.20, 0.10],
    [0.60, 0.80, 0.30],
    [0.70, 0.50, 0.95],
]


def test_acc_bwt_fwt_by_hand():
    # ACC = (0.70 + 0.50 + 0.95) / 3
    assert metrics.average_accuracy(R3) == pytest.approx(2.15 / 3)
    # BWT = ((0.70 - 0.90) + (0.50 - 0.80)) / 2 = (-0.20 - 0.30) / 2
    assert metrics.backward_transfer(R3) == pytest.approx(-0.25)
    # FWT = ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((0.20 - 0.10) + (0.30 - 0.05)) / 2
    assert metrics.forward_transfer(R3, [0.5, 0.10, 0.05]) == pytest.approx(0.175)


def test_forgetting_uses_max_over_earlier_rows():
    # Task 0: max(0.90, 0.60) - 0.70 = 0.20 (the max, not the last earlier row, 0.60).
    # Task 1: max(0.20, 0.80) - 0.50 = 0.30.
    np.testing.assert_allclose(metrics.forgetting_per_task(R3), [0.20, 0.30])
    assert metrics.average_forgetting(R3) == pytest.approx(0.25)
    # After step 1 only task 0 counts: 0.90 - 0.60.
    np.testing.assert_allclose(metrics.forgetting_per_task(R3, k=1), [0.30])
    curve = metrics.forgetting_curve(R3)
    assert math.isnan(curve[0])
    np.testing.assert_allclose(curve[1:], [0.30, 0.25])


def test_forgetting_can_be_negative_when_accuracy_improves():
    R = [[0.5, 0.0], [0.8, 0.9]]
    assert metrics.average_forgetting(R) == pytest.approx(-0.3)


def test_intransigence_by_hand():
    np.testing.assert_allclose(metrics.intransigence(R3, [0.95, 0.90, 0.95]), [0.05, 0.10, 0.0], atol=1e-12)


def test_lca_by_hand():
    Z = [
        [0.0, 0.5, 1.0],
        [0.2, 0.4, 0.6],
    ]
    # Column means 0.1, 0.45, 0.8. LCA_0 = 0.1; LCA_1 = (0.1 + 0.45) / 2; LCA_2 = 1.35 / 3.
    assert metrics.learning_curve_area(Z, beta=0) == pytest.approx(0.1)
    assert metrics.learning_curve_area(Z, beta=1) == pytest.approx(0.275)
    assert metrics.learning_curve_area(Z) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="beta"):
        metrics.learning_curve_area(Z, beta=3)


def test_summarize_and_definitions():
    out = metrics.summarize(R3, baseline=[0.1] * 3, reference=[1.0] * 3, Z=[[0.0, 1.0]] * 3)
    assert set(out) == {"acc", "bwt", "fwt", "forgetting", "intransigence", "lca"}
    assert set(out) <= set(metrics.DEFINITIONS)
    assert out["intransigence"] == pytest.approx((0.10 + 0.20 + 0.05) / 3)
    assert "Lopez-Paz" in metrics.DEFINITIONS["bwt"] and "Chaudhry" in metrics.DEFINITIONS["forgetting"]


def test_single_task_gives_nan_for_transfer_and_forgetting():
    R = [[0.7]]
    assert metrics.average_accuracy(R) == pytest.approx(0.7)
    assert math.isnan(metrics.backward_transfer(R))
    assert math.isnan(metrics.forward_transfer(R, [0.1]))
    assert math.isnan(metrics.average_forgetting(R))
    assert metrics.forgetting_per_task(R).shape == (0,)
    assert math.isnan(metrics.forgetting_curve(R)[0])


@pytest.mark.parametrize(
    "R, match",
    [
        ([[0.5, float("nan")], [0.5, 0.5]], r"R\[0, 1\] is nan"),
        ([[0.5, 0.5], [0.5, 87.0]], r"R\[1, 1\] = 87.0 is outside \[0, 1\].*percentages"),
        ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], r"square.*\(2, 3\)"),
        ([0.5, 0.5], r"2-D"),
        (np.zeros((0, 0)), r"T >= 1"),
    ],
)
def test_bad_matrix_is_named(R, match):
    with pytest.raises(ValueError, match=match):
        metrics.average_accuracy(R)


def test_bad_vectors_are_named():
    with pytest.raises(ValueError, match=r"baseline must have one entry per task, shape \(3,\)"):
        metrics.forward_transfer(R3, [0.1, 0.1])
    with pytest.raises(ValueError, match=r"reference\[1\] = -0.1"):
        metrics.intransigence(R3, [0.9, -0.1, 0.9])
    with pytest.raises(ValueError, match=r"k must be"):
        metrics.forgetting_per_task(R3, k=3)


def test_online_accuracy():
    c = [1, 0, 1, 1]
    assert metrics.online_accuracy(c) == pytest.approx(0.75)
    np.testing.assert_allclose(metrics.online_accuracy_curve(c), [1.0, 0.5, 2 / 3, 0.75])
    with pytest.raises(ValueError, match="empty"):
        metrics.online_accuracy([])
    with pytest.raises(ValueError, match=r"correct\[2\] is nan"):
        metrics.online_accuracy([1, 0, float("nan")])


def test_retention_by_unique_delay_by_hand():
    curve = metrics.retention_by_delay([1, 5, 1, 20, 5, 5], [1, 1, 1, 0, 0, 1])
    np.testing.assert_allclose(curve.delay, [1, 5, 20])
    np.testing.assert_allclose(curve.retention, [1.0, 2 / 3, 0.0])
    np.testing.assert_array_equal(curve.count, [2, 3, 1])
    np.testing.assert_allclose(curve.stderr, [0.0, math.sqrt(2 / 9 / 3), 0.0])


def test_retention_by_edges_and_int_bins():
    d, y = [0, 4, 5, 9, 10], [1, 1, 0, 0, 1]
    curve = metrics.retention_by_delay(d, y, bins=[0, 5, 10])
    np.testing.assert_array_equal(curve.count, [2, 3])  # the last bin is closed: 10 counts
    np.testing.assert_allclose(curve.retention, [1.0, 1 / 3])
    curve = metrics.retention_by_delay(d, y, bins=4)  # edges 0, 2.5, 5, 7.5, 10
    np.testing.assert_array_equal(curve.count, [1, 1, 1, 2])
    np.testing.assert_allclose(curve.delay, [0, 4, 5, 9.5])
    empty = metrics.retention_by_delay(d, y, bins=[0, 1, 3, 10])
    assert empty.count[1] == 0 and math.isnan(empty.retention[1])
    with pytest.raises(ValueError, match=r"delays\[3\] = 9.0 is outside the bin edges"):
        metrics.retention_by_delay(d, y, bins=[0, 5])
    with pytest.raises(ValueError, match=r"recalled\[1\] = 0.5"):
        metrics.retention_by_delay(d, [1, 0.5, 0, 0, 1])
    with pytest.raises(ValueError, match=r"delays\[0\] = -1.0"):
        metrics.retention_by_delay([-1, 2], [1, 1])


@pytest.mark.parametrize("h", [3.0, 10.0, 40.0])
def test_half_life_fit_recovers_known_h(h):
    rng = np.random.default_rng(1234)
    t = rng.uniform(0, 4 * h, size=5000)
    y = rng.random(5000) < np.exp(-math.log(2) * t / h)
    fit = metrics.fit_half_life(t, y)
    assert fit.note == "" and fit.n == 5000
    assert fit.half_life == pytest.approx(h, rel=0.08)
    assert abs(fit.half_life - h) < 4 * fit.stderr
    np.testing.assert_allclose(fit.retention([0.0, fit.half_life]), [1.0, 0.5])


def test_half_life_is_the_likelihood_maximum():
    t = np.array([1.0, 2, 3, 4, 5, 6])
    y = np.array([1, 1, 0, 1, 0, 0])
    fit = metrics.fit_half_life(t, y)

    def loglik(h):
        p = np.exp(-math.log(2) * t / h)
        return float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))

    grid = np.linspace(0.5, 20, 4000)
    assert fit.half_life == pytest.approx(grid[np.argmax([loglik(g) for g in grid])], abs=0.01)
    assert fit.log_likelihood == pytest.approx(loglik(fit.half_life))


def test_half_life_degenerate_data_does_not_crash():
    all_recalled = metrics.fit_half_life([1, 2, 3], [1, 1, 1])
    assert all_recalled.half_life == math.inf and "inf" in all_recalled.note
    np.testing.assert_allclose(all_recalled.retention([5.0]), [1.0])
    none_recalled = metrics.fit_half_life([1, 2, 3], [0, 0, 0])
    assert none_recalled.half_life == 0.0 and "0" in none_recalled.note
    np.testing.assert_allclose(none_recalled.retention([0.0, 1.0]), [1.0, 0.0])
    # A failure at delay 0 is impossible under the model: left out, and said so.
    fit = metrics.fit_half_life([0, 1, 2, 3], [0, 1, 0, 1])
    assert np.isfinite(fit.half_life) and fit.n == 3 and "delay 0" in fit.note
    nothing = metrics.fit_half_life([0], [0])
    assert math.isnan(nothing.half_life) and nothing.n == 0
    with pytest.raises(ValueError, match="empty"):
        metrics.fit_half_life([], [])


DELAYS = np.repeat([0, 3, 10, 30, 100, 300, 1000], 400)


@pytest.mark.parametrize("level, h", [(0.9, 200.0), (0.62, 1500.0)])
def test_retention_fit_recovers_level_and_half_life(level, h):
    rng = np.random.default_rng(7)
    y = rng.random(DELAYS.size) < level * 2.0 ** (-DELAYS / h)
    fit = metrics.fit_retention(DELAYS, y)
    assert fit.model == "exponential" and fit.n == DELAYS.size and fit.note == ""
    assert fit.level == pytest.approx(level, abs=0.04)
    assert fit.decay == pytest.approx(h, rel=0.3)
    assert fit.agrees and fit.dof == 5
    np.testing.assert_allclose(fit.retention([0.0, fit.decay]), [fit.level, fit.level / 2])


@pytest.mark.parametrize("level, b", [(0.95, 0.3), (0.7, 0.1)])
def test_retention_fit_recovers_a_power_law_and_prefers_it(level, b):
    rng = np.random.default_rng(8)
    y = rng.random(DELAYS.size) < level * (1.0 + DELAYS) ** (-b)
    fit = metrics.fit_retention(DELAYS, y)
    assert fit.model == "power" and fit.alternatives["power"] > fit.alternatives["exponential"]
    assert fit.level == pytest.approx(level, abs=0.05) and fit.decay == pytest.approx(b, abs=0.04)
    assert fit.agrees
    forced = metrics.fit_retention(DELAYS, y, model="exponential")  # the wrong shape is caught
    assert forced.model == "exponential" and forced.agrees is False and forced.p_value < 1e-3


def test_retention_fit_is_not_forced_through_one():
    # The case of issue 16: 62% recalled at every delay; the old fit read 25% at delay 1000.
    rng = np.random.default_rng(9)
    y = rng.random(DELAYS.size) < 0.62
    fit = metrics.fit_retention(DELAYS, y)
    assert fit.retention([1000.0])[0] == pytest.approx(0.62, abs=0.04) and fit.agrees
    old = metrics.fit_half_life(DELAYS, y)
    assert old.retention([1000.0])[0] < 0.5


def test_retention_fit_is_the_likelihood_maximum():
    d = np.array([0, 1, 2, 4, 8, 16, 32] * 3, dtype=float)
    y = np.array([1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 0])
    fit = metrics.fit_retention(d, y, model="exponential")

    def loglik(a, h):
        p = a * 2.0 ** (-d / h)
        return float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-np.minimum(p, 1 - 1e-16))))

    grid = [(a, h) for a in np.linspace(0.3, 1.0, 141) for h in np.geomspace(1, 200, 300)]
    best = max(grid, key=lambda p: loglik(*p))
    assert fit.log_likelihood == pytest.approx(loglik(fit.level, fit.decay))
    assert fit.log_likelihood >= loglik(*best) - 1e-6


def test_retention_fit_edge_cases_are_said():
    everything = metrics.fit_retention([1, 2, 3], [1, 1, 1])
    assert everything.level == 1.0 and everything.decay == math.inf and "no decay" in everything.note
    nothing = metrics.fit_retention([1, 2, 3], [0, 0, 0])
    assert nothing.level == 0.0 and "nothing was recalled" in nothing.note
    two = metrics.fit_retention([0, 0, 5, 5], [1, 0, 1, 0])
    assert two.agrees is None and math.isnan(two.p_value) and "too few" in two.note
    with pytest.raises(ValueError, match="model='gauss'"):
        metrics.fit_retention([1, 2], [1, 0], model="gauss")
    with pytest.raises(ValueError, match=r"recalled\[0\] = 2.0"):
        metrics.fit_retention([1, 2], [2, 0])
