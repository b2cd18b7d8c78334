"""Sweeps beyond one job at a time: the per-job thread budget and the sweep objective.

Hydra's launchers (``conf/hydra/launcher/``: joblib for local parallel jobs, submitit for
SLURM, Ray) run the jobs of ``synclearn run -m ...``; Hydra's Optuna sweeper
(``conf/hydra/sweeper/``) searches the learner's settings. Two pieces of that are ours:

- :class:`ThreadsPerJob`, a Hydra callback the launcher configs install: at the start of
  each job it sets torch's intra-op threads to ``cores // parallel_jobs`` (at least 1), so
  that ``n`` jobs side by side do not each start one thread per core (on 2 cores, two jobs
  of 2 threads each run slower than one after the other).
- :func:`sweep_objective`, what ``synclearn run`` returns to a sweeper: by default the
  benchmark's ``acc``; with an ``objective`` node in the config (the Optuna config sets one),
  ``metric`` minus the weighted ``penalties`` that the benchmark reports, e.g. recall
  (``acc``) minus the held-out text NLL change of the base (``text_nll_change``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping

try:  # Hydra is a dependency, but keep this importable without it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)


def threads_per_job(parallel_jobs: int, cores: int | None = None) -> int:
    """Torch threads for each of ``parallel_jobs`` jobs sharing ``cores`` (default: this
    process's usable cores); ``parallel_jobs <= 0`` means one job per core (joblib's -1)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if parallel_jobs <= 0:
        parallel_jobs = cores
    return max(1, cores // parallel_jobs)


class ThreadsPerJob(Callback):
    """A Hydra callback: each job starts with its share of the cores as torch threads.

    Args:
        n_jobs: jobs the launcher runs at once on this machine (joblib's ``n_jobs``; -1 = one per
            core); None: one job on ``cores``.
        cores: the cores those jobs share (SLURM's ``cpus_per_task``, Ray's ``num_cpus``; None:
            the cores this process may use).
        Both None (the sequential launcher): the callback changes nothing.
    """

    def __init__(self, n_jobs: int | None = None, cores: int | None = None) -> None:
        self.n_jobs = None if n_jobs is None else int(n_jobs)
        self.cores = None if cores is None else int(cores)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if self.n_jobs is None and self.cores is None:
            return
        import torch

        threads = threads_per_job(1 if self.n_jobs is None else self.n_jobs, self.cores)
        torch.set_num_threads(threads)
        log.info("torch threads of this job: %d (pid %d; %s jobs at once on %s cores)", threads, os.getpid(),
                 self.n_jobs or 1, self.cores or "all")
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # processes the job starts inherit the budget
            os.environ[var] = str(threads)


def sweep_objective(results: Mapping[str, Any], objective: Mapping[str, Any] | None = None) -> float | None:
    """The value a sweeper optimizes, from one job's metrics.

    Args:
        results: the benchmark's metrics (what ``metrics.json`` holds).
        objective: None (the benchmark's ``acc``, or None when it has none), or a mapping with
            ``metric`` (a metric name, higher is better) and optional ``penalties`` (metric name ->
            weight, subtracted as ``weight * value``; a penalty the benchmark does not report is
            left out: split-digits has no base drift, chat-facts has).

    Returns:
        ``results[metric] - sum(weight * results[name])``, or None when there is nothing to return.

    Raises:
        ValueError: ``metric`` is not among the results (the message lists those that are), or
            the objective has keys other than ``metric`` and ``penalties``.
    """
    if objective is not None and not isinstance(objective, Mapping):
        from omegaconf import OmegaConf

        objective = OmegaConf.to_container(objective, resolve=True)
    if objective is None:
        value = results.get("acc")
        return float(value) if isinstance(value, (int, float)) else None
    objective = dict(objective)
    unknown = sorted(set(objective) - {"metric", "penalties"})
    scalars = sorted(k for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    metric = objective.get("metric")
    if unknown or metric not in scalars:
        raise ValueError(f"objective {objective!r}: " + (f"unknown keys {unknown} (expected metric, penalties); "
                                                         if unknown else "")
                         + f"metric={metric!r} must be one of this benchmark's metrics: {', '.join(scalars)}")
    value = float(results[metric])
    for name, weight in dict(objective.get("penalties") or {}).items():
        if name in scalars and not math.isnan(float(results[name])):
            value -= float(weight) * float(results[name])
    return value
