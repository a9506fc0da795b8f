"""DARE (Yu et al., 2024): drop a fraction ``p`` of each τₖ at random and rescale the rest.

τ'ₖ = (mₖ ⊙ τₖ)/(1 − p) with mₖ ~ Bernoulli(1 − p), then task arithmetic (``dare_linear``)
or TIES (``dare_ties``). The masks are drawn once in ``prepare``, from generators seeded by
(study seed, task name, tensor name) on the CPU: every worker, on any device, draws the same
masks, and a trial is reproducible. ``prepare`` rewrites ``pool.tau`` in place (no second
``(N, P)`` buffer), so the pool then belongs to this method (``pool.tau_owner``).
"""

from __future__ import annotations

import hashlib

import torch

from mergesweep.errors import ConfigError, PoolError
from mergesweep.merge.base import PrepareContext
from mergesweep.merge.kernels import CHUNK
from mergesweep.merge.linear import TaskArithmetic
from mergesweep.merge.ties import Ties
from mergesweep.pool import ModelPool

__all__ = ["DareLinear", "DareTies", "dare_"]


def _check_p(p: float) -> float:
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"method.options.p: expected a number in [0, 1), got {p!r}") from None
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"method.options.p: the drop rate must lie in [0, 1), got {v}")
    return v


def _stream_seed(seed: int, task: str, name: str) -> int:
    digest = hashlib.sha256(f"dare:{seed}:{task}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_(pool: ModelPool, p: float, seed: int) -> None:
    """Drop and rescale ``pool.tau`` in place (once: a repeat with the same settings is a no-op).

    Raises:
        PoolError: the task vectors were already rewritten by another method or setting.
    """
    tag = f"dare(p={p}, seed={seed})"
    if pool.tau_owner == tag:
        return
    if pool.tau_owner is not None:
        raise PoolError(
            f"pool: task vectors were already rewritten by {pool.tau_owner}; load a fresh pool "
            f"for {tag}"
        )
    scale = 1.0 / (1.0 - p)
    offs = pool.layout.offsets
    draw = torch.empty(CHUNK)  # drawn on the CPU, so every device gets the same masks
    for k, task in enumerate(pool.experts):
        for i, name in enumerate(pool.layout.names):
            gen = torch.Generator().manual_seed(_stream_seed(seed, task, name))
            for s in range(offs[i], offs[i + 1], CHUNK):
                row = pool.tau[k, s : min(s + CHUNK, offs[i + 1])]
                factor = torch.rand(row.numel(), generator=gen, out=draw[: row.numel()])
                factor.ge_(p).mul_(scale)  # kept (probability 1 − p): 1/(1 − p), dropped: 0
                row.mul_(factor.to(row.device))
    pool.tau_owner = tag


class DareLinear(TaskArithmetic):
    """DARE, then task arithmetic over the rescaled task vectors.

    Args:
        p: drop rate in ``[0, 1)`` (0.5 is typical).
    """

    name = "dare_linear"

    def __init__(self, *, p: float = 0.5) -> None:
        self.p = _check_p(p)

    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:
        dare_(pool, self.p, context.seed)


class DareTies(Ties):
    """DARE, then TIES (trim, elect, disjoint merge) over the rescaled task vectors.

    Args:
        p: drop rate in ``[0, 1)``.
        density, merge: TIES's options.
    """

    name = "dare_ties"

    def __init__(self, *, p: float = 0.5, density: float = 0.2, merge: str = "mean") -> None:
        super().__init__(density=density, merge=merge)
        self.p = _check_p(p)

    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:
        dare_(pool, self.p, context.seed)
        super().prepare(pool, context)
