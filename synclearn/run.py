"""``synclearn run [overrides]``: the Hydra entry point for experiments and sweeps.

    synclearn run                                    # the default experiment (conf/config.yaml)
    synclearn run learner=lora memory=replay seed=1  # change config groups and values
    synclearn run -m learner=sparse,lora,full memory=none,replay,consolidate seed=0,1,2   # a sweep
    synclearn run experiment=tiny                    # a `# @package _global_` delta
    python -m synclearn.run --cfg job                # print the composed config

Every artifact goes under the Hydra output directory (``outputs/<date>/<time>/``, or
``multirun/<date>/<time>/<n>/`` for a sweep): the interaction log, checkpoints, metrics JSON
and CSV, plots. ``synclearn report DIR`` aggregates them. The work itself is in
:func:`synclearn.bench.experiment.run_experiment`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from synclearn.bench.experiment import run_experiment, summary_line

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_experiment(cfg, out_dir)
    for line in results.get("summary", []):
        print(line)
    print(summary_line(results, out_dir), flush=True)
    from synclearn.sweep import sweep_objective

    return sweep_objective(results, cfg.get("objective"))  # the sweep objective (optimizer plugins): acc by default


def main(argv: list[str] | None = None) -> int:
    """Run with ``argv`` as the Hydra command line (default: ``sys.argv[1:]``)."""
    if not CONF_DIR.is_dir():
        raise SystemExit(f"config directory {CONF_DIR} not found: synclearn run needs the source checkout "
                         "(pip install -e .)")
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-m", "--multirun") or a.startswith("-") for a in args):
        # a single run: compose its config first, so a mistake is one line (a UsageError), not Hydra's report
        from synclearn.chat.compose import compose_app

        compose_app([a for a in args if not a.startswith(("hydra.", "hydra/", "+hydra"))], "config")
    saved = sys.argv
    sys.argv = ["synclearn run", *args]
    try:
        hydra_main()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
