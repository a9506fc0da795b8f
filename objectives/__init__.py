"""Objectives: what a merged model is worth, per task. One module each, one registry line each.

Kinds:
    accuracy, cross_entropy: labelled metrics on a ``datasets`` split (:mod:`.classification`).
    entropy: mean prediction entropy on unlabelled inputs (AdaMerging's objective).
    callable: a user function ``"package.module:function"`` (:mod:`.callable`).
    lmeval: an lm-eval task metric of the live model through an in-memory ``HFLM``
        (:mod:`.lmeval`; needs the ``lm`` extra).

Example:
    >>> from mergesweep.objectives import build_objective
    >>> obj = build_objective("low", {"kind": "accuracy", "data": "zoo/data/low"})  # doctest: +SKIP
    >>> obj.setup(pool, seed=0); obj.evaluate(obj.model(pool))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mergesweep.errors import ConfigError
from mergesweep.objectives.aggregate import aggregate, study_directions
from mergesweep.objectives.base import DIRECTIONS, Direction, Objective
from mergesweep.objectives.callable import CallableObjective
from mergesweep.objectives.classification import Accuracy, CrossEntropy, Entropy
from mergesweep.objectives.data import DataObjective
from mergesweep.objectives.lmeval import LmEvalObjective
from mergesweep.registry import Registry

__all__ = [
    "DIRECTIONS",
    "OBJECTIVES",
    "DataObjective",
    "Direction",
    "Objective",
    "aggregate",
    "build_objective",
    "objective_options",
    "study_directions",
]

OBJECTIVES: Registry[type[Objective]] = Registry("objective", key="objectives.tasks.<task>.kind")
OBJECTIVES.register("accuracy")(Accuracy)
OBJECTIVES.register("cross_entropy")(CrossEntropy)
OBJECTIVES.register("entropy")(Entropy)
OBJECTIVES.register("callable")(CallableObjective)
OBJECTIVES.register("lmeval")(LmEvalObjective)


def objective_options(cls: type[Objective]) -> dict[str, inspect.Parameter]:
    """The options (keyword-only constructor arguments) an objective kind accepts."""
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_objective(task: str, spec: Mapping[str, Any]) -> Objective:
    """Build the objective of ``task`` from its config ``{"kind": ..., **options}``.

    Cheap: no data is loaded (that is :meth:`Objective.setup`, on each worker).

    Raises:
        ConfigError: no ``kind``, an unknown option, a missing required option or a bad value,
            each naming ``objectives.tasks.<task>.<option>``.
        UnknownNameError: an unknown kind (the message lists the registered ones).
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"objectives.tasks.{task}: expected a mapping with a 'kind'")
    options = dict(spec)
    if "kind" not in options:
        raise ConfigError(
            f"objectives.tasks.{task}.kind: missing; choose one of {', '.join(OBJECTIVES)}"
        )
    kind = options.pop("kind")
    cls = OBJECTIVES.get(str(kind), key=f"objectives.tasks.{task}.kind")
    accepted = objective_options(cls)
    for name in options:
        if name not in accepted:
            raise ConfigError(
                f"objectives.tasks.{task}.{name}: unknown option for objective '{kind}'; "
                f"valid options: {', '.join(accepted)}"
            )
    for name, p in accepted.items():
        if p.default is inspect.Parameter.empty and name not in options:
            raise ConfigError(f"objectives.tasks.{task}.{name}: required by objective '{kind}'")
    return cls(task, **options)
