"""LiNeS (Wang et al., 2025): task arithmetic with the task vector scaled by depth.

The coefficients of every tensor of layer ℓ (1..L) are multiplied by
``alpha + beta·(ℓ−1)/(L−1)``, keeping shallow layers near θ₀. Layers are parsed from tensor
names exactly as the spaces do (:func:`mergesweep.spaces.layers.parse_layers`): group 1 of
``layer_regex`` is the layer index, the distinct indices in ascending order are the layers;
non-layer tensors before the first layer tensor count as the first layer, after the last one as
the last layer, and in between as the layer of the preceding layer tensor. With one layer every
tensor gets ``alpha``.
"""

from __future__ import annotations

import numpy as np
import torch

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.merge.base import PrepareContext
from mergesweep.merge.linear import TaskArithmetic, check_plan
from mergesweep.merge.topk import require_prepared
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool
from mergesweep.spaces.layers import DEFAULT_LAYER_REGEX, LAYER_KEY, parse_layers

__all__ = ["Lines"]

_KEY = "method.options.layer_regex"


class Lines(TaskArithmetic):
    """Task arithmetic with LiNeS depth scaling of every tensor's coefficients.

    Args:
        alpha: scale of the first layer.
        beta: scale added at the last layer (which gets ``alpha + beta``).
        layer_regex: regex whose group 1 captures the layer index in a tensor name.

    Example:
        >>> Lines(alpha=0.5, beta=0.5).alpha
        0.5
    """

    name = "lines"

    def __init__(
        self, *, alpha: float = 0.5, beta: float = 0.5, layer_regex: str = DEFAULT_LAYER_REGEX
    ) -> None:
        try:
            self.alpha, self.beta = float(alpha), float(beta)
        except (TypeError, ValueError):
            raise ConfigError(
                f"method.options.alpha/beta: expected numbers, got {alpha!r}, {beta!r}"
            ) from None
        self.layer_regex = layer_regex
        self._factors = np.zeros(0)
        self._pool: ModelPool | None = None
        if not isinstance(layer_regex, str):
            raise ConfigError(f"{_KEY}: expected a regular expression, got {layer_regex!r}")

    def factors(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """``(T,)`` depth factor ``alpha + beta·(ℓ−1)/(L−1)`` of every tensor name."""
        try:
            layers = parse_layers(names, self.layer_regex)
        except (ConfigError, SpaceError) as exc:  # the shared parser names the space's key
            raise ConfigError(str(exc).replace(LAYER_KEY, _KEY)) from None
        return self.alpha + self.beta * layers.relative_depth()

    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:
        self._factors = self.factors(pool.layout.names)
        self._pool = pool

    def apply(self, pool: ModelPool, plan: MergePlan) -> None:
        check_plan(pool, plan)
        require_prepared(self, pool)
        super().apply(pool, MergePlan(plan.coefficients * self._factors[:, None]))

    def functional(self, pool: ModelPool, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        require_prepared(self, pool)
        factors = torch.as_tensor(self._factors, device=coefficients.device)
        return super().functional(pool, coefficients * factors.to(coefficients.dtype)[:, None])
