"""Magnitude top-k (Evo-Merging's sparsity-based denoising): θ = θ₀ + Σₖ λₖ·TopMag_αₖ(τₖ).

TopMag_α keeps the fraction α of the largest ``|τₖ|`` entries of each tensor and zeroes the
rest. α comes per trial from the plan's densities (per tensor and expert), so thresholds are
looked up in a :class:`~mergesweep.merge.topk.MagnitudeTable` built once in ``prepare``: exact
for tensors of up to 4,096 entries, within about 0.003 of α in kept fraction above that.
"""

from __future__ import annotations

import numpy as np
import torch

from mergesweep.merge.base import MergeMethod, PrepareContext
from mergesweep.merge.kernels import Scratch, linear_range
from mergesweep.merge.linear import check_plan
from mergesweep.merge.topk import (
    MagnitudeTable,
    check_density,
    exact_thresholds,
    keep_bounds,
    masked_linear_range,
    require_prepared,
    work_dtype,
)
from mergesweep.plan import MergePlan, segments
from mergesweep.pool import ModelPool

__all__ = ["Magnitude"]


class Magnitude(MergeMethod):
    """Task arithmetic over magnitude-pruned task vectors.

    Args:
        density: the kept fraction used when a plan has no densities (1.0: plain task
            arithmetic).

    Example:
        >>> Magnitude(density=0.5).density
        0.5
    """

    name = "magnitude"

    def __init__(self, *, density: float = 1.0) -> None:
        self.density = check_density(density, "method.options.density")
        self._scratch = Scratch()
        self._pool: ModelPool | None = None
        self._thr = np.zeros((0, 0))
        self._table: MagnitudeTable | None = None

    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:
        """Exact thresholds for ``density`` and the table for per-trial densities."""
        self._thr = exact_thresholds(pool, self.density)
        self._table = MagnitudeTable(pool, seed=context.seed)
        self._pool = pool

    def apply(self, pool: ModelPool, plan: MergePlan) -> None:
        check_plan(pool, plan)
        require_prepared(self, pool)
        thr = self._thr
        if plan.densities is not None and self._table is not None:
            thr = self._table.thresholds(plan.densities)
        rows, offs = plan.coefficients, pool.layout.offsets
        wd = work_dtype(pool.live)
        lam = torch.as_tensor(rows, dtype=wd, device=pool.live.device)
        bounds = keep_bounds(thr)
        # Tensors that keep everything (threshold 0) run as plain task arithmetic, in runs of
        # equal coefficients; a masked tensor gets a tag of its own, so it is a run of one.
        keep_all = np.all(thr <= 0.0, axis=1)
        tag = np.where(keep_all, -1.0, np.arange(len(keep_all)))[:, None]
        live, base, tau, scratch = pool.live, pool.base, pool.tau, self._scratch
        for a, b in segments(np.hstack([rows, tag])):
            if keep_all[a]:
                linear_range(live, base, tau, rows[a], offs[a], offs[b])
            else:
                masked_linear_range(live, base, tau, lam[a], bounds[a], offs[a], offs[b], scratch)

    def functional(self, pool: ModelPool, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable merge at the option's density (the masks are constants)."""
        require_prepared(self, pool)
        wd = work_dtype(pool.live)
        out: dict[str, torch.Tensor] = {}
        for i, n in enumerate(pool.layout.names):
            a, b = pool.layout.offsets[i], pool.layout.offsets[i + 1]
            taus = pool.tau[:, a:b].to(wd)
            thr = torch.as_tensor(self._thr[i], dtype=wd, device=taus.device).view(-1, 1)
            lam = coefficients[i].to(wd)
            merged = (lam.view(-1, 1) * taus * (taus.abs() >= thr)).sum(0)
            base = pool.flat_view(pool.base, i)
            out[n] = base + merged.view(base.shape).to(base.dtype)
        return out
