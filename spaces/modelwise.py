"""Model-wise space: one λ per expert, the same on every tensor (task arithmetic's λₖ)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergesweep.plan import MergePlan
from mergesweep.pool import PoolLayout
from mergesweep.spaces._options import bounds
from mergesweep.spaces.base import Param, Space

__all__ = ["ModelWise"]


class ModelWise(Space):
    """``lambda.<expert>`` in ``[low, high]``, starting at ``init``.

    Args:
        layout: the pool layout.
        low: lower bound of every λ.
        high: upper bound of every λ.
        init: start value (0.3 is the usual task-arithmetic default).

    Example:
        >>> from mergesweep.pool import PoolLayout
        >>> layout = PoolLayout(("a", "b"), ("w",), ((2,),), "fp")
        >>> space = ModelWise(layout, init=0.5)
        >>> space.names(), space.to_plan({"lambda.a": 0.2, "lambda.b": 0.7}).coefficients
        (['lambda.a', 'lambda.b'], array([[0.2, 0.7]]))
    """

    kind = "modelwise"

    def __init__(
        self, layout: PoolLayout, *, low: float = 0.0, high: float = 1.0, init: float = 0.3
    ) -> None:
        super().__init__(layout)
        self.low, self.high, self.init = bounds(low, high, init)
        self.params = [Param(f"lambda.{e}", self.low, self.high, self.init) for e in layout.experts]

    def to_plan(self, point: Mapping[str, float]) -> MergePlan:
        p = self.check(point)
        lambdas = [p[f"lambda.{e}"] for e in self.layout.experts]
        return MergePlan.uniform(self.layout.num_tensors, lambdas)

    def options(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "init": self.init}
