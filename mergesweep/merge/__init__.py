"""Merge methods: one module each, one registry line each."""

from __future__ import annotations

from mergesweep.errors import ConfigError
from mergesweep.merge.base import MergeMethod, PrepareContext
from mergesweep.merge.dare import DareLinear, DareTies
from mergesweep.merge.dfmerge import DFMerge
from mergesweep.merge.fisher import Fisher
from mergesweep.merge.linear import TaskArithmetic
from mergesweep.merge.lines import Lines
from mergesweep.merge.magnitude import Magnitude
from mergesweep.merge.ties import Ties
from mergesweep.registry import Registry

__all__ = ["METHODS", "MergeMethod", "PrepareContext", "build_method"]

METHODS: Registry[type[MergeMethod]] = Registry("method", key="method.name")
METHODS.register("task_arithmetic")(TaskArithmetic)
METHODS.register("linear")(TaskArithmetic)
METHODS.register("ties")(Ties)
METHODS.register("dare_linear")(DareLinear)
METHODS.register("dare_ties")(DareTies)
METHODS.register("fisher")(Fisher)
METHODS.register("magnitude")(Magnitude)
METHODS.register("lines")(Lines)
METHODS.register("dfmerge")(DFMerge)


def build_method(name: str, options: dict | None = None) -> MergeMethod:
    """Instantiate the method registered as ``name`` with its config options."""
    cls = METHODS.get(name)
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"method.options: {exc} (method '{name}')") from None
