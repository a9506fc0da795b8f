"""Anchor space: k coefficients per expert at evenly spaced depths, interpolated between.

Anchor ``j`` of ``k`` sits at relative depth ``j/(k−1)`` (the first layer is 0, the last 1);
a tensor at depth ``i`` of ``L`` layers gets, per expert, the linear interpolation of the
anchors at ``i/(L−1)``. ``k = 1`` is model-wise, ``k = 2`` a per-expert LiNeS line, ``k = L``
one free value per layer. Non-layer tensors before the first layer count as depth 0, after the
last as depth ``L−1`` (see :mod:`mergesweep.spaces.layers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mergesweep.errors import SpaceError
from mergesweep.plan import MergePlan
from mergesweep.pool import PoolLayout
from mergesweep.spaces._options import PREFIX, bounds, integer
from mergesweep.spaces.base import Param, Space
from mergesweep.spaces.layers import DEFAULT_LAYER_REGEX, parse_layers

__all__ = ["Anchors"]


class Anchors(Space):
    """``lambda.<expert>.anchor<j>`` for ``j`` in ``0 … k−1``.

    Args:
        layout: the pool layout.
        k: anchors per expert, at most the number of layers ``L``.
        low: lower bound of every anchor.
        high: upper bound of every anchor.
        init: start value of every anchor.
        layer_regex: regex whose group 1 captures the layer index in a tensor name.
    """

    kind = "anchors"

    def __init__(
        self,
        layout: PoolLayout,
        *,
        k: int = 3,
        low: float = 0.0,
        high: float = 1.0,
        init: float = 0.3,
        layer_regex: str = DEFAULT_LAYER_REGEX,
    ) -> None:
        super().__init__(layout)
        self.k = integer(k, "k", minimum=1)
        self.low, self.high, self.init = bounds(low, high, init)
        self.layer_regex = layer_regex
        layers = parse_layers(layout.names, layer_regex)
        if self.k > layers.num_layers:
            # more anchors than layers: some anchor values could not be told apart
            raise SpaceError(
                f"{PREFIX}k: {self.k} anchors need at least {self.k} layers; "
                f"layer_regex finds {layers.num_layers}"
            )
        x = layers.relative_depth()
        # (T, k) interpolation weights: coefficients = weights @ anchors, exact and vectorised
        self._weights = np.stack(
            [np.interp(x, self.positions(), np.eye(self.k)[j]) for j in range(self.k)], axis=1
        )
        self.params = [
            Param(f"lambda.{e}.anchor{j}", self.low, self.high, self.init)
            for e in layout.experts
            for j in range(self.k)
        ]

    def positions(self) -> np.ndarray:
        """Relative depths of the anchors, ``j/(k−1)``; ``[0]`` for one anchor."""
        return np.linspace(0.0, 1.0, self.k) if self.k > 1 else np.zeros(1)

    def to_plan(self, point: Mapping[str, float]) -> MergePlan:
        p = self.check(point)
        values = np.array(
            [[p[f"lambda.{e}.anchor{j}"] for e in self.layout.experts] for j in range(self.k)]
        )
        return MergePlan(self._weights @ values)

    def options(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "low": self.low,
            "high": self.high,
            "init": self.init,
            "layer_regex": self.layer_regex,
        }
