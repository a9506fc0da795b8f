"""From per-task metrics to study values: one aggregate, or one value per task (Pareto).

Convention for directions: an aggregate (``mean``, ``weighted``, ``min``) combines metrics of
**one direction only** and keeps it; mixing ``maximize`` and ``minimize`` metrics in one
aggregate is refused with a :class:`~mergesweep.errors.ConfigError` (negating one kind would
silently mix scales such as accuracy and nats). Use ``mode: pareto`` to optimise metrics of
different directions together.

``min`` is the worst task: the smallest value of ``maximize`` metrics, the largest value of
``minimize`` metrics.

Example:
    >>> aggregate({"a": 0.8, "b": 0.6}, {"a": "maximize", "b": "maximize"}, "mean")
    0.7
    >>> aggregate({"a": 0.8, "b": 0.6}, {"a": "maximize", "b": "maximize"}, "min")
    0.6
    >>> study_directions({"a": "maximize", "b": "maximize"}, "pareto")
    ['maximize', 'maximize']
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mergesweep.errors import ConfigError
from mergesweep.objectives.base import DIRECTIONS, Direction

__all__ = ["AGGREGATES", "MODES", "aggregate", "common_direction", "study_directions"]

AGGREGATES = ("mean", "weighted", "min")
MODES = (*AGGREGATES, "pareto")


def common_direction(directions: Mapping[str, str]) -> Direction:
    """The one direction shared by every task; refuses a mix (see the module doc)."""
    _check_directions(directions)
    kinds = {d: sorted(t for t, x in directions.items() if x == d) for d in DIRECTIONS}
    if kinds["maximize"] and kinds["minimize"]:
        raise ConfigError(
            "objectives.mode: cannot aggregate maximize metrics "
            f"({', '.join(kinds['maximize'])}) with minimize metrics "
            f"({', '.join(kinds['minimize'])}); use mode 'pareto' or objectives of one direction"
        )
    if not directions:
        raise ConfigError("objectives.tasks: at least one task is needed")
    return "maximize" if kinds["maximize"] else "minimize"


def _check_directions(directions: Mapping[str, str]) -> None:
    for task, d in directions.items():
        if d not in DIRECTIONS:
            raise ConfigError(
                f"objectives.tasks.{task}.direction: unknown direction '{d}'; "
                f"choose one of {', '.join(DIRECTIONS)}"
            )


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(
            f"objectives.mode: unknown mode '{mode}'; choose one of {', '.join(MODES)}"
        )


def study_directions(directions: Mapping[str, str], mode: str) -> list[Direction]:
    """The study's directions: one per task (in order) for ``pareto``, else the common one."""
    _check_mode(mode)
    if mode == "pareto":
        _check_directions(directions)
        return list(directions.values())  # type: ignore[arg-type]
    return [common_direction(directions)]


def aggregate(
    values: Mapping[str, float],
    directions: Mapping[str, str],
    mode: str = "mean",
    weights: Mapping[str, float] | None = None,
) -> float:
    """Combine per-task values into one study value.

    Args:
        values: metric per task.
        directions: direction per task (every task of ``values``).
        mode: ``mean``; ``weighted`` (Σ wₜ vₜ / Σ wₜ, a weight for every task, non-negative,
            not all zero); ``min`` (the worst task, see the module doc).
        weights: per-task weights for ``weighted``.

    Raises:
        ConfigError: unknown mode, mixed directions, or bad weights.
    """
    if mode not in AGGREGATES:
        raise ConfigError(
            f"objectives.mode: '{mode}' is not an aggregate; choose one of {', '.join(AGGREGATES)}"
        )
    missing = [t for t in values if t not in directions]
    if missing:
        raise ConfigError(f"objectives.tasks: no direction for task(s) {', '.join(missing)}")
    direction = common_direction({t: directions[t] for t in values})
    if mode == "mean":
        return math.fsum(values.values()) / len(values)
    if mode == "min":
        return min(values.values()) if direction == "maximize" else max(values.values())
    weights = weights or {}
    missing = [t for t in values if t not in weights]
    if missing:
        raise ConfigError(f"objectives.weights: no weight for task(s) {', '.join(missing)}")
    if any(weights[t] < 0 for t in values) or not math.fsum(weights[t] for t in values) > 0:
        raise ConfigError("objectives.weights: weights must be non-negative and not all zero")
    total = math.fsum(weights[t] for t in values)
    return math.fsum(weights[t] * v for t, v in values.items()) / total
