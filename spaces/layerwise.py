"""Layer-wise space: one λ per expert per block of layers, or per tensor (AdaMerging)."""

from __future__ import annotations

from typing import Any

from mergesweep.errors import ConfigError
from mergesweep.pool import PoolLayout
from mergesweep.spaces._options import bounds, choice
from mergesweep.spaces.base import GroupedSpace
from mergesweep.spaces.layers import (
    DEFAULT_LAYER_REGEX,
    LAYER_KEY,
    parse_layers,
    tensor_labels,
)

__all__ = ["LayerWise"]

GRANULARITIES = ("block", "tensor")


class LayerWise(GroupedSpace):
    """``lambda.<expert>.<block>``: tensors of one layer share their coefficients.

    With ``granularity="block"`` the blocks are ``layer<i>`` for each layer index parsed by
    ``layer_regex``, plus ``embed`` (non-layer tensors before the first layer), ``final``
    (after the last) and ``other`` (between layers), each only if it has tensors (see
    :mod:`mergesweep.spaces.layers`). With ``granularity="tensor"`` every tensor has its own
    λ, labelled ``t<index>.<short name>``, as in the AdaMerging and DF-Merge reference code
    (where a "layer" is one parameter tensor); ``layer_regex`` is then refused.

    Args:
        layout: the pool layout.
        granularity: ``"block"`` or ``"tensor"``.
        low: lower bound of every λ.
        high: upper bound of every λ.
        init: start value of every λ.
        layer_regex: regex whose group 1 captures the layer index in a tensor name
            (default ``r"\\.(\\d+)\\."``).
    """

    kind = "layerwise"

    def __init__(
        self,
        layout: PoolLayout,
        *,
        granularity: str = "block",
        low: float = 0.0,
        high: float = 1.0,
        init: float = 0.3,
        layer_regex: str | None = None,
    ) -> None:
        super().__init__(layout)
        self.granularity = choice(granularity, "granularity", GRANULARITIES)
        self.low, self.high, self.init = bounds(low, high, init)
        if self.granularity == "block":
            self.layer_regex = DEFAULT_LAYER_REGEX if layer_regex is None else layer_regex
            labels = list(parse_layers(layout.names, self.layer_regex).blocks)
        elif layer_regex is not None:
            raise ConfigError(f"{LAYER_KEY}: only used with granularity 'block'")
        else:
            self.layer_regex = None
            labels = tensor_labels(layout.names)
        self._set_groups(labels, self.low, self.high, self.init)

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "granularity": self.granularity,
            "low": self.low,
            "high": self.high,
            "init": self.init,
        }
        if self.granularity == "block":
            out["layer_regex"] = self.layer_regex
        return out
