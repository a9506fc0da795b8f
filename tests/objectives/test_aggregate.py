"""Aggregation of per-task values into study values."""

from __future__ import annotations

import pytest

from mergesweep.errors import ConfigError
from mergesweep.objectives import aggregate, study_directions

MAX = {"a": "maximize", "b": "maximize", "c": "maximize"}
VALUES = {"a": 0.8, "b": 0.6, "c": 0.4}


def test_mean_weighted_min() -> None:
    assert aggregate(VALUES, MAX, "mean") == pytest.approx(0.6)
    # (1·0.8 + 3·0.6 + 0·0.4) / 4
    assert aggregate(VALUES, MAX, "weighted", {"a": 1, "b": 3, "c": 0}) == pytest.approx(0.65)
    assert aggregate(VALUES, MAX, "min") == 0.4


def test_min_is_the_worst_task_for_minimized_metrics() -> None:
    losses = {"a": 0.3, "b": 1.2}
    dirs = {"a": "minimize", "b": "minimize"}
    assert aggregate(losses, dirs, "min") == 1.2
    assert aggregate(losses, dirs, "mean") == pytest.approx(0.75)


def test_study_directions() -> None:
    mixed = {"a": "maximize", "b": "minimize"}
    assert study_directions(mixed, "pareto") == ["maximize", "minimize"]
    assert study_directions(MAX, "mean") == ["maximize"]
    assert study_directions({"b": "minimize"}, "min") == ["minimize"]
    with pytest.raises(
        ConfigError,
        match=r"cannot aggregate maximize metrics \(a\) with "
        r"minimize metrics \(b\); use mode 'pareto'",
    ):
        study_directions(mixed, "weighted")
    with pytest.raises(
        ConfigError,
        match=r"objectives\.mode: unknown mode 'sum'; choose one of "
        r"mean, weighted, min, pareto",
    ):
        study_directions(MAX, "sum")
    with pytest.raises(ConfigError, match=r"objectives\.tasks\.a\.direction: unknown direction"):
        study_directions({"a": "up"}, "pareto")


def test_aggregate_errors() -> None:
    with pytest.raises(ConfigError, match=r"objectives\.mode: cannot aggregate maximize"):
        aggregate({"a": 1.0, "b": 2.0}, {"a": "maximize", "b": "minimize"}, "mean")
    with pytest.raises(ConfigError, match=r"'pareto' is not an aggregate"):
        aggregate(VALUES, MAX, "pareto")
    with pytest.raises(ConfigError, match=r"objectives\.weights: no weight for task\(s\) c"):
        aggregate(VALUES, MAX, "weighted", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match=r"objectives\.weights: weights must be non-negative"):
        aggregate(VALUES, MAX, "weighted", {"a": 1, "b": -1, "c": 1})
    with pytest.raises(ConfigError, match=r"objectives\.weights: .*not all zero"):
        aggregate(VALUES, MAX, "weighted", {"a": 0, "b": 0, "c": 0})
    with pytest.raises(ConfigError, match=r"objectives\.tasks: no direction for task\(s\) c"):
        aggregate(VALUES, {"a": "maximize", "b": "maximize"}, "mean")
