"""The searcher protocol: an Optuna sampler configured from the study's context."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import optuna

from mergesweep.spaces.base import Space

if TYPE_CHECKING:
    from mergesweep.runtime.base import Executor
    from mergesweep.study import StudySetup

__all__ = ["SearchContext", "Searcher", "distributions"]


@dataclass
class SearchContext:
    """What a searcher may use to configure itself.

    Attributes:
        space: the coefficient space (parameters, bounds, natural start point).
        seed: the study seed; every random choice derives from it.
        directions: one Optuna direction per study value.
        budget: complete trials the study aims for.
        prior_trials: complete trials inherited from a forked study (for warm starts).
    """

    space: Space
    seed: int
    directions: list[str]
    budget: int
    prior_trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)


def distributions(space: Space) -> dict[str, optuna.distributions.BaseDistribution]:
    """The space's parameters as Optuna distributions (same names, bounds, log and step)."""
    return {
        p.name: optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        for p in space.params
    }


class Searcher(ABC):
    """Chooses points through Optuna's ask/tell, so storage, resume and dashboard work alike.

    Subclasses set ``name`` and ``multi_objective`` and take their options as keyword-only
    constructor arguments (an unknown option raises).
    """

    name: ClassVar[str]
    multi_objective: ClassVar[bool] = True

    @abstractmethod
    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        """Build the sampler; called on every start and resume (samplers are not stored)."""

    def options(self) -> dict[str, Any]:
        """The searcher's settings, stored with the study and compared on resume."""
        return {}

    def drive(self, setup: StudySetup, executor: Executor, budget: int) -> bool:
        """Run the study with a loop of the searcher's own and return True.

        For searchers that are more than a sampler (AdaMerging's gradient steps run on a worker
        through ``executor.call``); they record their points as trials themselves. The default
        returns False: the driver's asynchronous ask/tell loop runs.
        """
        return False

    def finalize(self, setup: StudySetup) -> None:  # noqa: B027
        """Called when a run of the study ends (MAP stores its predicted front here)."""

    def transform_values(self, values: list[float], params: dict[str, float]) -> list[float]:
        """The study values of a trial at ``params`` from its aggregated metrics.

        The driver applies this to every result; the default keeps the values. Evo-Merging adds
        its penalty on the point (0.05·mean|x|) here.
        """
        return values

    def max_trials(self, space: Space) -> int | None:
        """An upper bound on distinct trials (a grid's size); ``None`` when unbounded."""
        return None
