"""The Ray actor of :class:`~mergesweep.runtime.ray_executor.RayExecutor`.

It builds its :class:`~mergesweep.runtime.worker.Evaluator` from the study's config on its own
node, once, and reports a failed load through :meth:`_Worker.ready` as a message (clearer than
Ray's creation-task traceback).
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import numpy as np

from mergesweep.plan import MergePlan
from mergesweep.pool import PoolLayout
from mergesweep.runtime.base import Job, JobResult

__all__ = ["Worker", "rss_mb"]


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        return 0.0


def _quiet_worker() -> None:
    """No download progress bars or info logs from every actor in the driver's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


class Worker:
    """The actor: loads the pool once; ``run`` merges and evaluates one job.

    A failed load is kept and reported by :meth:`ready` (a clear message beats a Ray
    creation-task traceback).
    """

    def __init__(self, config: dict[str, Any], layout: PoolLayout | None) -> None:
        import ray

        from mergesweep.runtime.worker import Evaluator

        _quiet_worker()
        node = ray.get_runtime_context().get_node_id()
        self.name = f"{socket.gethostname()}:{os.getpid()}@{node[:8]}"
        self.node = node
        self.error: str | None = None
        self.evaluator: Evaluator | None = None
        self.trials = 0
        try:
            self.evaluator = Evaluator(config, layout)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict[str, Any]:
        load_s = self.evaluator.load_s if self.evaluator is not None else 0.0
        return {"worker": self.name, "node": self.node, "load_s": load_s, "error": self.error}

    def run(self, job: Job) -> JobResult:
        assert self.evaluator is not None  # the driver only dispatches to loaded workers
        plan = job.plan  # Ray hands numpy arrays over read-only: give the kernels copies
        job.plan = MergePlan(
            np.array(plan.coefficients),
            None if plan.densities is None else np.array(plan.densities),
        )
        result = self.evaluator.evaluate(job)
        self.trials += 1
        result.worker = self.name
        result.timings["load_s"] = self.evaluator.load_s
        return result

    def call(self, fn: Any, *args: Any) -> Any:
        return fn(self.evaluator, *args)

    def stats(self) -> dict[str, Any]:
        return {"worker": self.name, "node": self.node, "trials": self.trials, "rss_mb": rss_mb()}
