"""Every plot writes a readable, non-empty PNG without ever opening a window."""

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from synclearn.eval import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
R3 = [[0.9, 0.1, 0.2], [0.8, 0.95, 0.3], [0.7, 0.85, 0.9]]


def _check_png(path, expected):
    assert path == expected
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000
    image = matplotlib.image.imread(path)  # decodes: a real image, not just a header
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert plt.get_fignums() == []  # no pyplot figure (so no window) was ever opened


def test_accuracy_matrix_heatmap(tmp_path):
    out = tmp_path / "nested" / "acc.png"
    _check_png(plots.plot_accuracy_matrix(R3, out, task_names=["a", "b", "c"]), out)
    with pytest.raises(ValueError, match="task_names has 2 labels"):
        plots.plot_accuracy_matrix(R3, tmp_path / "x.png", task_names=["a", "b"])


def test_retention_curves_several_methods(tmp_path):
    rng = np.random.default_rng(0)
    curves, half_lives = {}, {}
    for name, h in [("sparse", 10.0), ("full", 3.0)]:
        t = rng.integers(1, 30, size=500)
        y = rng.random(500) < np.exp(-math.log(2) * t / h)
        curves[name] = metrics.retention_by_delay(t, y, bins=6)
        half_lives[name] = metrics.fit_half_life(t, y).half_life
    curves["plain arrays"] = ([1, 5, 20], [0.9, 0.6, 0.1])
    half_lives["plain arrays"] = math.inf  # a degenerate fit is skipped, not drawn
    out = tmp_path / "retention.png"
    _check_png(plots.plot_retention_curves(curves, out, half_lives=half_lives), out)
    with pytest.raises(ValueError, match="empty"):
        plots.plot_retention_curves({}, out)


def test_forgetting_curves(tmp_path):
    out = tmp_path / "forgetting.png"
    curves = {"sparse": metrics.forgetting_curve(R3), "full": [math.nan, 0.4, 0.35]}
    _check_png(plots.plot_forgetting_curves(curves, out), out)


@pytest.mark.parametrize("kind", ["mask", "intervals", "none"])
def test_latency_while_learning(tmp_path, kind):
    t = np.arange(300) * 0.1
    on_mask = (t > 5) & (t < 12)
    ms = 20.0 + 5.0 * on_mask + np.random.default_rng(1).normal(0, 1, t.size)
    learner_on = {"mask": on_mask, "intervals": [(5.0, 12.0)], "none": None}[kind]
    out = tmp_path / f"latency_{kind}.png"
    _check_png(plots.plot_latency(t, ms, out, learner_on=learner_on), out)


def test_latency_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        plots.plot_latency([0, 1], [5.0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="learner_on must be"):
        plots.plot_latency([0, 1, 2], [5.0, 5, 5], tmp_path / "x.png", learner_on=[True, False])


def test_metric_bars(tmp_path):
    out = tmp_path / "bars.png"
    groups = ["lr=0.1", "lr=0.01"]
    path = plots.plot_metric_bars(groups, {"acc": [0.8, 0.7], "bwt": [-0.1, math.nan]}, out,
                                  stds={"acc": [0.01, math.nan]})
    _check_png(path, out)
    with pytest.raises(ValueError, match=r"means\['acc'\] has shape \(3,\), expected \(2,\)"):
        plots.plot_metric_bars(groups, {"acc": [0.8, 0.7, 0.1]}, out)
