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
    fits = {name: metrics.fit_retention(*_samples(h)) for name, h in [("sparse", 10.0), ("full", 3.0)]}
    curves["plain arrays"] = ([1, 5, 20], [0.9, 0.6, 0.1])
    half_lives["plain arrays"] = math.inf  # a degenerate fit is skipped, not drawn
    out = tmp_path / "retention.png"
    _check_png(plots.plot_retention_curves(curves, out, half_lives=half_lives), out)
    out = tmp_path / "retention_fits.png"
    _check_png(plots.plot_retention_curves(curves, out, fits=fits), out)
    with pytest.raises(ValueError, match=r"fits for \['other'\] have no curve"):
        plots.plot_retention_curves(curves, out, fits={"other": fits["full"]})
    with pytest.raises(ValueError, match="empty"):
        plots.plot_retention_curves({}, out)


def _samples(h, level=0.8, n=800, seed=0):
    rng = np.random.default_rng(seed)
    t = np.repeat([0, 2, 5, 10, 20, 40], n // 6)
    return t, rng.random(t.size) < level * 2.0 ** (-t / h)


def test_fit_label_says_whether_fit_and_data_agree():
    t, y = _samples(10.0)
    good = plots.fit_label(metrics.fit_retention(t, y))
    assert " * 2^(-d/" in good and "p = " in good and "disagrees" not in good
    rng = np.random.default_rng(1)
    step = rng.random(t.size) < np.where(t < 10, 0.9, 0.1)  # a cliff: no smooth decay fits it
    bad = plots.fit_label(metrics.fit_retention(t, step, model="exponential"))
    assert bad.endswith("fit disagrees with the data")
    few = plots.fit_label(metrics.fit_retention([0, 0, 5, 5], [1, 0, 1, 0]))
    assert "too few delays" in few


def test_forgetting_curves(tmp_path, monkeypatch):
    out = tmp_path / "forgetting.png"
    curves = {"sparse": metrics.forgetting_curve(R3), "full": [math.nan, 0.4, 0.35]}
    saved = []

    def keep(fig, path):  # the real _save, keeping the figure to inspect its ticks
        saved.append(fig)
        return real_save(fig, path)

    real_save = plots._save
    monkeypatch.setattr(plots, "_save", keep)
    _check_png(plots.plot_forgetting_curves(curves, out), out)
    ticks = saved[0].axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)  # groups are counted: 0, 1, 2


@pytest.mark.parametrize("kind", ["mask", "intervals", "none"])
def test_latency_while_learning(tmp_path, kind):
    t = np.arange(300) * 0.1
    on_mask = (t > 5) & (t < 12)
    ms = 20.0 + 5.0 * on_mask + np.random.default_rng(1).normal(0, 1, t.size)
    learner_on = {"mask": on_mask, "intervals": [(5.0, 12.0)], "none": None}[kind]
    out = tmp_path / f"latency_{kind}.png"
    _check_png(plots.plot_latency(t, ms, out, learner_on=learner_on, learner_steps=12), out)


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
    assert plots._runs_note([3, 3], 2) == " (mean ± std over 3 seeds)"
    assert plots._runs_note([1, 1], 2) == " (one run each)"
    _check_png(plots.plot_metric_bars(groups, {"acc": [0.8, 0.7]}, out, runs=[1, 1]), out)
    with pytest.raises(ValueError, match="runs has 1 entries"):
        plots.plot_metric_bars(groups, {"acc": [0.8, 0.7]}, out, runs=[2])
    with pytest.raises(ValueError, match=r"means\['acc'\] has shape \(3,\), expected \(2,\)"):
        plots.plot_metric_bars(groups, {"acc": [0.8, 0.7, 0.1]}, out)
