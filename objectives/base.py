"""The objective protocol: what one task's metric is worth on a live model."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar, Literal

import torch
from torch import nn

from mergesweep.pool import ModelPool

__all__ = ["DIRECTIONS", "Direction", "Objective", "prefix_size"]

Direction = Literal["maximize", "minimize"]
DIRECTIONS: tuple[Direction, ...] = ("maximize", "minimize")


def prefix_size(fraction: float, n: int) -> int:
    """Examples in the prefix ``fraction`` of an ``n``-example subset: ``max(1, ceil(f · n))``,
    none at 0 and all of them at 1 (the driver and the objectives count rungs alike)."""
    return 0 if fraction <= 0 else n if fraction >= 1 else max(1, math.ceil(fraction * n))


class Objective(ABC):
    """One task's metric.

    Built from config on the driver (cheap: no data loaded, so ``metric`` and ``direction`` are
    known there) and set up on each worker with :meth:`setup`, which loads data once. The task
    model evaluated is ``pool.model(objective.head)``: ``head`` is the objective's own task
    unless its config names another expert.

    Subclasses set ``kind``, ``metric`` and ``direction`` and take their options as keyword-only
    constructor arguments after ``task`` (an unknown option is an error). Objectives never change
    torch's thread count (the runtime owns it).
    """

    kind: ClassVar[str]
    metric: str
    direction: Direction
    # Whether evaluate_prefix works (``pruning`` needs it): nested prefixes of the subset.
    prefixes: ClassVar[bool] = False

    def __init__(self, task: str) -> None:
        self.task = task
        self.head = task

    def key(self, option: str) -> str:
        """The config key path of one of this objective's options (for error messages)."""
        return f"objectives.tasks.{self.task}.{option}"

    def model(self, pool: ModelPool) -> nn.Module:
        """The live model this objective evaluates: ``pool.model(self.head)``."""
        return pool.model(self.head)

    def setup(self, pool: ModelPool, seed: int) -> None:  # noqa: B027
        """Load data and tokenizers once per worker; the default needs nothing."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> float:
        """The metric of ``model`` on this task's fixed evaluation subset."""

    def evaluate_prefix(self, model: nn.Module, fraction: float) -> float:
        """The metric on the first ``fraction`` of the fixed subset, for pruning's rungs.

        Prefixes are nested (a larger fraction holds every example of a smaller one) and the
        same in every trial, so rung scores compare across trials.
        """
        total, count = self.evaluate_range(model, 0.0, fraction)
        return total / count

    def evaluate_range(self, model: nn.Module, start: float, stop: float) -> tuple[float, int]:
        """``(sum, count)`` of the per-example metric over the examples between the prefixes
        ``start`` and ``stop`` (fractions): a rung scores only what the rung below did not, and
        the driver adds the sums up (the mean of the prefix ``stop`` is their ratio)."""
        raise NotImplementedError(f"objective '{self.kind}' cannot score a prefix of its subset")

    def evaluate_examples(self, model: nn.Module, start: float, stop: float) -> torch.Tensor:
        """The per-example metric (1-D, float64) over the same examples as
        :meth:`evaluate_range`, in the fixed order: the paired pruner compares two trials
        example by example. Objectives with ``prefixes`` provide it."""
        raise NotImplementedError(f"objective '{self.kind}' cannot score single examples")

    def evaluate_positions(self, model: nn.Module, positions: Sequence[int]) -> torch.Tensor:
        """The per-example metric (1-D, float64) of the examples at ``positions`` of the fixed
        order, in the order given: the paired pruner's ``contentious`` order scores the
        examples most likely to tell two trials apart first. Objectives with ``prefixes``
        provide it."""
        raise NotImplementedError(f"objective '{self.kind}' cannot score single examples")

    def batches(self, limit: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Model-input batches (no labels) from the task's data, for Fisher and AdaMerging.

        Args:
            limit: at most this many batches (``None``: every batch of the evaluation subset).
        """
        raise NotImplementedError(f"objective '{self.kind}' provides no input batches")

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of ``model`` on one batch from :meth:`batches` (differentiable)."""
        raise NotImplementedError(f"objective '{self.kind}' provides no logits")

    def take_timings(self) -> dict[str, float]:
        """Time spent inside the evaluations since the last call, by part (e.g. ``forward_s``:
        the model's forward passes), then reset; the worker adds them to the trial's timings.
        The default reports nothing."""
        return {}
