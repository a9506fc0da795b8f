"""Shared by the quality benchmarks: score a study's pick on held-out data, best-so-far curves.

* :class:`Scorer` keeps one pool resident with the config's merge method prepared and scores a
  plan by accuracy on the config's task data, on validation and on test;
* :func:`best_so_far` and :func:`trials_to` read a single-objective study's progress;
* :func:`machine` is the machine record every result JSON carries;
* :func:`bench_lock` is the lock that keeps benchmark measurements from overlapping.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

import mergesweep
from mergesweep.api import load_config_dict
from mergesweep.objectives import build_objective
from mergesweep.plan import MergePlan
from mergesweep.runtime.worker import Evaluator

__all__ = ["LOCK", "Scorer", "bench_lock", "best_so_far", "complete_trials", "machine", "trials_to"]

LOCK = Path("/tmp/mergesweep-bench.lock")

# Options of a task's objective that describe its data (carried to the accuracy scorers).
DATA_KEYS = ("data", "batch_size", "inputs", "label", "head", "max_length")


class Scorer:
    """A resident pool with its method prepared on the experiment's data (validation, or the
    unlabelled test inputs for AdaMerging), scored by accuracy on validation and on test.

    Each task's accuracy reads the data its objective names (same folder, tokenizer length and
    head). Validation keeps the objective's ``samples`` subset (drawn with the config's seed,
    as in the study) unless ``full_validation``; test always uses the whole split.
    """

    def __init__(self, config: dict[str, Any], *, full_validation: bool = False) -> None:
        self.ev = Evaluator(load_config_dict(config))
        self.tasks = list(self.ev.cfg.objectives.tasks)
        self.splits: dict[str, dict[str, Any]] = {"validation": {}, "test": {}}
        for split, objs in self.splits.items():
            for t, spec in self.ev.cfg.objectives.tasks.items():
                acc = {k: spec[k] for k in DATA_KEYS if k in spec}
                acc.update(kind="accuracy", split=split)
                if split == "validation" and not full_validation and "samples" in spec:
                    acc["samples"] = spec["samples"]
                objs[t] = build_objective(t, acc)
                objs[t].setup(self.ev.pool, self.ev.cfg.seed)

    def scores(self, plan: MergePlan, split: str) -> dict[str, float]:
        self.ev.method.apply(self.ev.pool, plan)
        return {
            t: float(o.evaluate(self.ev.pool.model(self.ev.heads[t])))
            for t, o in self.splits[split].items()
        }

    def val(self, plan: MergePlan) -> dict[str, float]:
        return self.scores(plan, "validation")

    def test_scores(self, plan: MergePlan) -> dict[str, Any]:
        acc = self.scores(plan, "test")
        return {"test": acc, "test_avg": float(np.mean(list(acc.values())))}


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials in the order they were asked."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: t.number)


def best_so_far(study: optuna.Study) -> np.ndarray:
    """Running maximum of a maximised single-objective study's values, one per complete trial."""
    return np.maximum.accumulate([t.value for t in complete_trials(study)])


def trials_to(curve: np.ndarray, target: float) -> int | None:
    """Complete trials until the best-so-far first reaches ``target`` (None: never)."""
    hit = np.flatnonzero(np.asarray(curve) >= target)
    return int(hit[0] + 1) if hit.size else None


def cpu_name() -> str:
    """The CPU's model name and the widest vector unit torch uses (AVX2, AVX512...)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return f"{name or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})"


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mergesweep": getattr(mergesweep, "__version__", ""),
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def bench_lock(path: Path | None = LOCK) -> Iterator[None]:
    """The shared benchmark lock: one measurement on the machine at a time (None: no lock)."""
    if path is None:
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
