"""The package surface: ``from synclearn.eval import metrics`` stays numpy-only; plots load on demand."""

import subprocess
import sys

import synclearn.eval as ev


def test_metrics_import_does_not_load_matplotlib():
    code = (
        "import sys\n"
        "from synclearn.eval import metrics, report_main\n"
        "assert metrics.average_accuracy([[1.0]]) == 1.0\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib loaded by the metrics import'\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_exports_resolve():
    for name in ev.__all__:
        assert getattr(ev, name) is not None, name
    assert ev.plot_latency is ev.plots.plot_latency
    assert ev.report_main is ev.report.main
