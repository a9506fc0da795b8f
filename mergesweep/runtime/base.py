"""The executor protocol: ``submit(job)``, ``wait_any()``, ``shutdown()``.

The driver keeps ``capacity`` jobs in flight and refills as results arrive; only the driver
writes to the storage. A job carries the plan (a small array), never model tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mergesweep.plan import MergePlan

__all__ = ["Executor", "Job", "JobResult"]


@dataclass
class Job:
    """One trial to run: its Optuna number, the plan to merge, and the fraction of each task's
    fixed subset to score (below 1: a pruning rung, a nested prefix of the subset).

    ``start`` above 0 (a higher rung): only the examples past the prefix ``start`` are scored,
    and the result holds their means and ``counts``; the driver adds the rung below.
    ``examples``: return every scored example's metric too (the paired pruner's evidence).
    ``positions`` (the paired pruner's ``contentious`` order): per task, exactly which
    examples of the fixed order to score, in that order, instead of the prefixes.
    """

    number: int
    plan: MergePlan
    fraction: float = 1.0
    start: float = 0.0
    examples: bool = False
    positions: dict[str, list[int]] | None = None


@dataclass
class JobResult:
    """What a worker returns: per-task metrics and timings, or the reason it failed.

    ``retry`` is true when the failure was the worker's (it died), not the trial's: the driver
    re-queues such a trial's point (capped). ``counts``: examples scored per task, for a job
    on part of the subsets (a pruning rung); empty for a whole evaluation. ``examples``: the
    per-example metric of each task over the scored examples, when the job asked for it.
    """

    number: int
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    retry: bool = False
    worker: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(ABC):
    """Runs jobs on workers that hold the pool resident."""

    capacity: int = 1

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Start ``job``; the caller keeps at most ``capacity`` in flight."""

    @abstractmethod
    def wait_any(self, timeout: float | None = None) -> list[JobResult]:
        """Block until at least one job finishes (or ``timeout``) and return the finished ones."""

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(evaluator, *args)`` on one worker and return its (small) result.

        For searchers that work on the resident pool directly (AdaMerging's gradient steps);
        ``fn`` must be importable by name on the worker.
        """
        raise NotImplementedError(f"{type(self).__name__} does not run calls on workers")

    def load_info(self) -> dict[str, Any]:
        """Per-worker one-off costs (``load_s``), for the study's records."""
        return {}

    def shutdown(self) -> None:  # noqa: B027
        """Release workers."""
