"""The merge-method protocol: ``prepare`` once per worker, ``apply`` in place per trial."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool

__all__ = ["MergeMethod", "PrepareContext"]


@dataclass
class PrepareContext:
    """What ``prepare`` may use besides the pool.

    Attributes:
        seed: the study seed (DARE masks and any other random choice derive from it).
        batches: per task, a callable returning model-input batches (dicts of tensors) from that
            task's data, for data-dependent methods (Fisher); empty when no objective has data.
        logits: per task, a callable ``(model, batch) -> logits`` matching those batches.
    """

    seed: int = 0
    batches: dict[str, Callable[[], Iterable[dict[str, torch.Tensor]]]] = field(
        default_factory=dict
    )
    logits: dict[str, Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]] = field(
        default_factory=dict
    )


class MergeMethod(ABC):
    """A merge operator over a resident :class:`ModelPool`.

    Subclasses take their options as keyword-only constructor arguments (``method.options`` in
    the config; an unknown option is an error, never silently dropped),
    do all per-study work in :meth:`prepare`, and write ``pool.live`` in :meth:`apply` without
    allocating model-sized buffers.
    """

    name: ClassVar[str]

    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:  # noqa: B027
        """One-off work per worker (trimming, masks, Fisher); the default needs none."""

    @abstractmethod
    def apply(self, pool: ModelPool, plan: MergePlan) -> None:
        """Write the merge of ``plan`` into ``pool.live`` in place."""

    def functional(self, pool: ModelPool, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable merged tensors for ``(T, N)`` coefficients (gradient searchers).

        The default is task arithmetic over the prepared task vectors.
        """
        out: dict[str, torch.Tensor] = {}
        for i, n in enumerate(pool.layout.names):
            base = pool.flat_view(pool.base, i)
            taus = torch.stack([pool.flat_view(pool.tau[k], i) for k in range(pool.tau.shape[0])])
            c = coefficients[i].to(taus.dtype).view(-1, *([1] * base.dim()))
            out[n] = base + (c * taus).sum(0).to(base.dtype)
        return out
