"""LiNeS prior: coefficients grow linearly with depth, α at the first layer, α + β at the last.

For a tensor at depth ``i`` of ``L`` layers (0-based) the coefficient is
``α + β·i/(L−1)`` (LiNeS's ``α + β(ℓ−1)/(L−1)`` with 1-based ℓ), keeping shallow layers near
θ₀. Non-layer tensors before the first layer count as depth 0, after the last as depth
``L−1`` (see :mod:`mergesweep.spaces.layers`). With one layer every tensor gets α.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mergesweep.plan import MergePlan
from mergesweep.pool import PoolLayout
from mergesweep.spaces._options import bounds, flag
from mergesweep.spaces.base import Param, Space
from mergesweep.spaces.layers import DEFAULT_LAYER_REGEX, parse_layers

__all__ = ["Lines"]


class Lines(Space):
    """``alpha`` and ``beta`` (shared) or ``alpha.<expert>`` and ``beta.<expert>``.

    Args:
        layout: the pool layout.
        per_expert: one (α, β) per expert instead of one pair for the merged task vector.
        alpha_low: lower bound of α.
        alpha_high: upper bound of α.
        alpha_init: start value of α.
        beta_low: lower bound of β.
        beta_high: upper bound of β.
        beta_init: start value of β (0: task arithmetic at λ = α).
        layer_regex: regex whose group 1 captures the layer index in a tensor name.
    """

    kind = "lines"

    def __init__(
        self,
        layout: PoolLayout,
        *,
        per_expert: bool = False,
        alpha_low: float = 0.0,
        alpha_high: float = 1.0,
        alpha_init: float = 0.3,
        beta_low: float = 0.0,
        beta_high: float = 1.0,
        beta_init: float = 0.0,
        layer_regex: str = DEFAULT_LAYER_REGEX,
    ) -> None:
        super().__init__(layout)
        self.per_expert = flag(per_expert, "per_expert")
        self.alpha = bounds(
            alpha_low, alpha_high, alpha_init, names=("alpha_low", "alpha_high", "alpha_init")
        )
        self.beta = bounds(
            beta_low, beta_high, beta_init, names=("beta_low", "beta_high", "beta_init")
        )
        self.layer_regex = layer_regex
        self._x = parse_layers(layout.names, layer_regex).relative_depth()
        suffixes = [f".{e}" for e in layout.experts] if self.per_expert else [""]
        self.params = [Param(f"alpha{s}", *self.alpha) for s in suffixes]
        self.params += [Param(f"beta{s}", *self.beta) for s in suffixes]

    def to_plan(self, point: Mapping[str, float]) -> MergePlan:
        p = self.check(point)
        n = self.layout.num_experts
        if self.per_expert:
            alpha = np.array([p[f"alpha.{e}"] for e in self.layout.experts])
            beta = np.array([p[f"beta.{e}"] for e in self.layout.experts])
        else:
            alpha, beta = np.full(n, p["alpha"]), np.full(n, p["beta"])
        return MergePlan(alpha[None, :] + self._x[:, None] * beta[None, :])

    def options(self) -> dict[str, Any]:
        return {
            "per_expert": self.per_expert,
            "alpha_low": self.alpha[0],
            "alpha_high": self.alpha[1],
            "alpha_init": self.alpha[2],
            "beta_low": self.beta[0],
            "beta_high": self.beta[1],
            "beta_init": self.beta[2],
            "layer_regex": self.layer_regex,
        }
