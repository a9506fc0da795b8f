"""The inline executor: trials run in the driver process, one at a time (tests, debugging)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mergesweep.pool import PoolLayout
from mergesweep.runtime.base import Executor, Job, JobResult
from mergesweep.runtime.worker import Evaluator

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    """Runs each job at submit time in this process; the evaluator is built once."""

    capacity = 1

    def __init__(self, config: dict[str, Any], layout: PoolLayout | None = None) -> None:
        self.evaluator = Evaluator(config, layout)
        self._done: list[JobResult] = []

    def submit(self, job: Job) -> None:
        result = self.evaluator.evaluate(job)
        result.worker = "inline"
        result.timings["load_s"] = self.evaluator.load_s
        self._done.append(result)

    def wait_any(self, timeout: float | None = None) -> list[JobResult]:
        done, self._done = self._done, []
        return done

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.evaluator, *args)

    def load_info(self) -> dict[str, Any]:
        return {"inline": {"load_s": self.evaluator.load_s}}
