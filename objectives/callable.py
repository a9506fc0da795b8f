"""A user function as an objective: ``function: "package.module:function"``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from mergesweep.errors import ConfigError, ObjectiveError
from mergesweep.objectives.base import DIRECTIONS, Objective

__all__ = ["CallableObjective", "import_function"]


def import_function(path: str, *, key: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (the module must be importable on every worker)."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ObjectiveError(f"{key}: expected 'package.module:function', got {path!r}")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError and errors raised while importing alike
        raise ObjectiveError(
            f"{key}: cannot import module '{module_name}': {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ObjectiveError(f"{key}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ObjectiveError(f"{key}: '{path}' is not callable")
    return obj


class CallableObjective(Objective):
    """Calls ``fn(model, task=task)``; it returns a float, or a dict of floats of which
    ``metric`` picks one.

    Options:
        function: ``"package.module:function"``.
        direction: ``maximize`` (default) or ``minimize``.
        metric: the metric's name, and the key picked from a dict result (default: the
            function's name).

    Example config::

        objectives:
          tasks:
            low: {kind: callable, function: "my_evals:score", metric: f1}
    """

    kind = "callable"

    def __init__(
        self,
        task: str,
        *,
        function: str,
        direction: str = "maximize",
        metric: str | None = None,
    ) -> None:
        super().__init__(task)
        if direction not in DIRECTIONS:
            raise ConfigError(
                f"{self.key('direction')}: expected one of {', '.join(DIRECTIONS)}, "
                f"got {direction!r}"
            )
        self.function = function
        self.fn = import_function(function, key=self.key("function"))
        self.direction = direction  # type: ignore[assignment]
        self.metric = str(metric) if metric is not None else function.rsplit(":", 1)[-1]

    def evaluate(self, model: nn.Module) -> float:
        result = self.fn(model, task=self.task)
        if isinstance(result, Mapping):
            if self.metric not in result:
                raise ObjectiveError(
                    f"{self.key('metric')}: '{self.function}' returned no '{self.metric}'; "
                    f"choose one of {', '.join(map(str, result))}"
                )
            result = result[self.metric]
        try:
            return float(result)
        except (TypeError, ValueError):
            raise ObjectiveError(
                f"{self.key('function')}: '{self.function}' returned {type(result).__name__}, "
                "not a number or a dict of numbers"
            ) from None
