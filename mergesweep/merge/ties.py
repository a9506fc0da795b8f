"""TIES merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

Per tensor and expert the top ``density`` fraction of ``|τₖ|`` is kept (τ̂ₖ); the plan's
coefficient scales it (vₖ = λₖ·τ̂ₖ) before the sign election γ = sgn(Σₖ vₖ); the merged vector
is the mean (or sum) of the vₖ entries whose sign agrees with γ, and θ = θ₀ + τ_m. An entry
whose vₖ sum to exactly zero has no elected sign and keeps θ₀.
"""

from __future__ import annotations

import numpy as np
import torch

from mergesweep.errors import ConfigError
from mergesweep.merge.base import MergeMethod, PrepareContext
from mergesweep.merge.kernels import Scratch
from mergesweep.merge.linear import check_plan
from mergesweep.merge.topk import (
    MASK_CHUNK,
    MagnitudeTable,
    check_density,
    exact_thresholds,
    keep_bounds,
    require_prepared,
    trim_rows,
    work_dtype,
)
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool

__all__ = ["Ties", "ties_range"]


def ties_range(
    out: torch.Tensor,
    base: torch.Tensor,
    tau: torch.Tensor,
    lam: torch.Tensor,
    bounds: list[float],
    lo: int,
    hi: int,
    scratch: Scratch,
    *,
    mean: bool,
    chunk: int = MASK_CHUNK,
) -> None:
    """TIES of ``tau[:, lo:hi]`` into ``out[lo:hi]`` with chunk-sized scratch only.

    Args:
        lam: ``(N,)`` coefficients in the work dtype.
        bounds: per expert, entries with ``|τₖ| > bounds[k]`` survive the trim
            (:func:`~mergesweep.merge.topk.keep_bounds`).
        mean: disjoint mean (``True``) or sum of the agreeing entries.
    """
    N = tau.shape[0]
    # vₖ = λₖτ̂ₖ = |λₖ|·(±τ̂ₖ): flipping the rows of negative λₖ once leaves only |λ| to apply,
    # and |λ| ≥ 0 commutes with the clamp below, so every weighted sum is one mv with |λ|.
    flip = [k for k in range(N) if lam[k] < 0]
    mag = lam.abs()
    used = (mag > 0).to(lam.dtype)
    if out.is_cuda:
        chunk = max(hi - lo, 1)
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        x = scratch.get("x", (N, e - s), out, lam.dtype)
        sign = scratch.get("sign", (e - s,), out, lam.dtype)
        num = scratch.get("num", (e - s,), out, lam.dtype)
        trim_rows(x, tau[:, s:e], bounds)
        for k in flip:
            x[k].neg_()
        torch.mv(x.T, mag, out=sign)
        sign.sign_()  # γ = sgn(Σₖ vₖ)
        # vₖ·γ is |vₖ| where vₖ agrees with γ and ≤ 0 elsewhere: clamping keeps the agreeing.
        x.mul_(sign).clamp_(min=0)
        torch.mv(x.T, mag, out=num)
        if mean:
            count = scratch.get("count", (e - s,), out, lam.dtype)
            torch.mv(x.sign_().T, used, out=count)  # agreeing entries of experts with λₖ ≠ 0
            num.div_(count.clamp_(min=1))
        num.mul_(sign)
        torch.add(base[s:e], num, out=out[s:e])


class Ties(MergeMethod):
    """TIES with per-tensor, per-expert coefficients (and optional per-trial densities).

    Args:
        density: fraction of the largest ``|τₖ|`` entries kept per tensor and expert; a plan's
            ``densities`` override it per trial (looked up in a :class:`MagnitudeTable`).
        merge: ``"mean"`` (disjoint mean, the paper's) or ``"sum"`` of the agreeing entries.

    Example:
        >>> Ties(density=0.2, merge="mean").name
        'ties'
    """

    name = "ties"

    def __init__(self, *, density: float = 0.2, merge: str = "mean") -> None:
        self.density = check_density(density, "method.options.density")
        if merge not in ("mean", "sum"):
            raise ConfigError(f"method.options.merge: expected 'mean' or 'sum', got {merge!r}")
        self.merge = merge
        self._scratch = Scratch()
        self._pool: ModelPool | None = None
        self._thr = np.zeros((0, 0))
        self._table: MagnitudeTable | None = None

    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:
        """Exact trim thresholds for ``density`` and a table for per-trial densities."""
        self._thr = exact_thresholds(pool, self.density)
        self._table = MagnitudeTable(pool, seed=context.seed)
        self._pool = pool

    def thresholds(self, pool: ModelPool, plan: MergePlan) -> np.ndarray:
        """``(T, N)`` trim thresholds of ``plan`` (its densities, else the option's)."""
        require_prepared(self, pool)
        if plan.densities is None or self._table is None:
            return self._thr
        return self._table.thresholds(plan.densities)

    def apply(self, pool: ModelPool, plan: MergePlan) -> None:
        check_plan(pool, plan)
        bounds = keep_bounds(self.thresholds(pool, plan))
        lam = torch.as_tensor(
            plan.coefficients, dtype=work_dtype(pool.live), device=pool.live.device
        )
        offs = pool.layout.offsets
        for i in range(pool.layout.num_tensors):
            ties_range(
                pool.live,
                pool.base,
                pool.tau,
                lam[i],
                bounds[i],
                offs[i],
                offs[i + 1],
                self._scratch,
                mean=self.merge == "mean",
            )

    def functional(self, pool: ModelPool, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable TIES at the option's density; γ and the agreement are constants."""
        require_prepared(self, pool)
        wd = work_dtype(pool.live)
        out: dict[str, torch.Tensor] = {}
        for i, n in enumerate(pool.layout.names):
            a, b = pool.layout.offsets[i], pool.layout.offsets[i + 1]
            taus = pool.tau[:, a:b].to(wd)
            thr = torch.as_tensor(self._thr[i], dtype=wd, device=taus.device).view(-1, 1)
            v = taus * (taus.abs() >= thr) * coefficients[i].to(wd).view(-1, 1)
            sign = v.detach().sum(0).sign()
            agree = v.detach() * sign > 0
            merged = (v * agree).sum(0)
            if self.merge == "mean":
                merged = merged / agree.sum(0).clamp(min=1)
            base = pool.flat_view(pool.base, i)
            out[n] = base + merged.view(base.shape).to(base.dtype)
        return out
