"""Density space: per-expert density αₖ and coefficient βₖ (Evo-Merging's search space).

The plan carries ``densities`` (keep the top αₖ fraction of |τₖ| on every tensor, the
magnitude top-k method) and ``coefficients`` βₖ (signed scales). Evo-Merging searches them in
two stages, which ``search`` expresses: stage 1 ``search="density"`` with
``fixed_lambda`` = 1/N, stage 2 ``search="lambda"`` with ``fixed_density`` = the stage-1 best.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mergesweep.errors import ConfigError
from mergesweep.plan import MergePlan
from mergesweep.pool import PoolLayout
from mergesweep.spaces._options import PREFIX, bounds, choice, per_expert
from mergesweep.spaces.base import Param, Space

__all__ = ["Density"]

SEARCHES = ("both", "density", "lambda")


class Density(Space):
    """``density.<expert>`` in ``[density_low, 1]`` and ``lambda.<expert>`` in ``[low, high]``.

    Args:
        layout: the pool layout.
        search: ``"both"``, ``"density"`` (λ fixed at ``fixed_lambda``) or ``"lambda"``
            (densities fixed at ``fixed_density``).
        density_low: lower bound of every density (the upper bound is 1).
        density_init: start value of every density (1: keep everything).
        low: lower bound of every λ (negative allowed: sign-aware scaling).
        high: upper bound of every λ.
        init: start value of every λ; default 1/N.
        fixed_density: with ``search="lambda"``: a density for all experts, a list in expert
            order or ``{expert: density}``; default 1.
        fixed_lambda: with ``search="density"``: the same forms; default 1/N.
    """

    kind = "density"

    def __init__(
        self,
        layout: PoolLayout,
        *,
        search: str = "both",
        density_low: float = 0.0,
        density_init: float = 1.0,
        low: float = -1.5,
        high: float = 1.5,
        init: float | None = None,
        fixed_density: float | list[float] | dict[str, float] | None = None,
        fixed_lambda: float | list[float] | dict[str, float] | None = None,
    ) -> None:
        super().__init__(layout)
        experts = layout.experts
        n = layout.num_experts
        self.search = choice(search, "search", SEARCHES)
        self.density_low, _, self.density_init = bounds(
            density_low, 1.0, density_init, names=("density_low", "density_high", "density_init")
        )
        if self.density_low < 0.0:
            raise ConfigError(f"{PREFIX}density_low: {self.density_low} must be at least 0")
        self.low, self.high, self.init = bounds(low, high, 1.0 / n if init is None else init)
        self.fixed_density: list[float] | None = None
        self.fixed_lambda: list[float] | None = None
        if self.search == "lambda":
            self.fixed_density = per_expert(
                1.0 if fixed_density is None else fixed_density, "fixed_density", experts
            )
            bad = [d for d in self.fixed_density if not 0.0 <= d <= 1.0]
            if bad:
                raise ConfigError(f"{PREFIX}fixed_density: {bad[0]} lies outside [0, 1]")
        elif fixed_density is not None:
            raise ConfigError(f"{PREFIX}fixed_density: only used with search 'lambda'")
        if self.search == "density":
            self.fixed_lambda = per_expert(
                1.0 / n if fixed_lambda is None else fixed_lambda, "fixed_lambda", experts
            )
        elif fixed_lambda is not None:
            raise ConfigError(f"{PREFIX}fixed_lambda: only used with search 'density'")
        if self.search != "lambda":
            self.params += [
                Param(f"density.{e}", self.density_low, 1.0, self.density_init) for e in experts
            ]
        if self.search != "density":
            self.params += [Param(f"lambda.{e}", self.low, self.high, self.init) for e in experts]

    def to_plan(self, point: Mapping[str, float]) -> MergePlan:
        p = self.check(point)
        experts = self.layout.experts
        dens = self.fixed_density
        if dens is None:
            dens = [p[f"density.{e}"] for e in experts]
        lams = self.fixed_lambda
        if lams is None:
            lams = [p[f"lambda.{e}"] for e in experts]
        t = self.layout.num_tensors
        return MergePlan(
            coefficients=np.tile(np.asarray(lams, dtype=np.float64), (t, 1)),
            densities=np.tile(np.asarray(dens, dtype=np.float64), (t, 1)),
        )

    def options(self) -> dict[str, Any]:
        return {
            "search": self.search,
            "density_low": self.density_low,
            "density_init": self.density_init,
            "low": self.low,
            "high": self.high,
            "init": self.init,
            "fixed_density": self.fixed_density,
            "fixed_lambda": self.fixed_lambda,
        }
