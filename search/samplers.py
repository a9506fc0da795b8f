"""Searchers backed by Optuna's own samplers: tpe, gp, cmaes, random, grid, nsga2."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna

from mergesweep.errors import ConfigError
from mergesweep.search.base import SearchContext, Searcher
from mergesweep.search.truncnorm import use_scipy_truncnorm
from mergesweep.spaces.base import Space

__all__ = ["GP", "NSGA2", "TPE", "CmaEs", "Grid", "Random"]


class _CompleteCount:
    """TPE's ``gamma`` (its good group's size) counted over the complete trials only: Optuna's
    default ``min(ceil(0.1 · n), 25)`` (no cap with several objectives) with ``n`` the complete
    trials, not complete + pruned.

    Pruned trials rank below every complete one in TPE's split, so with Optuna's count, a study
    that prunes most trials puts every complete trial in the good group, the random startup
    ones too, and TPE stops focusing. Without pruning the two counts are the same.
    """

    def __init__(self, objectives: int = 1) -> None:
        self.complete: int | None = None
        self.cap = 25 if objectives == 1 else None

    def __call__(self, n: int) -> int:
        below = math.ceil(0.1 * (n if self.complete is None else min(n, self.complete)))
        return below if self.cap is None else min(below, self.cap)


class _TPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE with :class:`_CompleteCount` as its ``gamma``, refreshed before each trial."""

    def __init__(self, objectives: int = 1, **kwargs: Any) -> None:
        self._count = _CompleteCount(objectives)
        with warnings.catch_warnings():
            # gamma is deprecated for optuna 6 (pinned below it) but is the way to size the split.
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(gamma=self._count, **kwargs)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        self._count.complete = len(done)


class TPE(Searcher):
    """Tree-structured Parzen estimator (multivariate), the quick default; its good group is
    sized by the complete trials (:class:`_CompleteCount`), so pruning does not blur it."""

    name = "tpe"

    def __init__(self, *, n_startup_trials: int = 10, multivariate: bool = True) -> None:
        self.n_startup_trials = n_startup_trials
        self.multivariate = multivariate

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        use_scipy_truncnorm()  # TPE's candidate draws in C rather than Python loops
        return _TPESampler(
            objectives=len(ctx.directions),
            seed=ctx.seed,
            n_startup_trials=self.n_startup_trials,
            multivariate=self.multivariate,
        )

    def options(self) -> dict[str, Any]:
        return {"n_startup_trials": self.n_startup_trials, "multivariate": self.multivariate}


class GP(Searcher):
    """Optuna's Gaussian-process sampler (no botorch needed; handles several objectives)."""

    name = "gp"

    def __init__(self, *, n_startup_trials: int = 10) -> None:
        self.n_startup_trials = n_startup_trials

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(
            seed=ctx.seed, n_startup_trials=self.n_startup_trials, warn_independent_sampling=False
        )

    def options(self) -> dict[str, Any]:
        return {"n_startup_trials": self.n_startup_trials}


class CmaEs(Searcher):
    """CMA-ES started at the space's natural point; warm-starts from forked trials."""

    name = "cmaes"
    multi_objective = False

    def __init__(self, *, sigma0: float | None = None, popsize: int | None = None) -> None:
        self.sigma0 = sigma0
        self.popsize = popsize

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        warm = bool(ctx.prior_trials)
        with warnings.catch_warnings():
            # x0/sigma0 are deprecated for optuna 6 but remain the way to start at a point.
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.CmaEsSampler(
                x0=None if warm else ctx.space.init_point(),
                sigma0=None if warm else self.sigma0,
                popsize=self.popsize,
                seed=ctx.seed,
                source_trials=ctx.prior_trials or None,
                warn_independent_sampling=False,
            )

    def options(self) -> dict[str, Any]:
        return {"sigma0": self.sigma0, "popsize": self.popsize}


class Random(Searcher):
    """Uniform random search (the baseline every other searcher must beat)."""

    name = "random"

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=ctx.seed)


class Grid(Searcher):
    """A full grid: ``points`` evenly spaced values per parameter (or explicit ``values``)."""

    name = "grid"

    def __init__(self, *, points: int = 5, values: list[float] | None = None) -> None:
        if points < 2 and values is None:
            raise ConfigError("searcher.options.points: needs at least 2 points per parameter")
        self.points = points
        self.values = values

    def grid(self, space: Space) -> dict[str, list[float]]:
        grid = {
            p.name: (
                list(self.values)
                if self.values is not None
                else [round(float(v), 10) for v in np.linspace(p.low, p.high, self.points)]
            )
            for p in space.params
        }
        size = int(np.prod([len(v) for v in grid.values()], dtype=np.float64))
        if size > 1_000_000:
            raise ConfigError(
                f"searcher.options.points: the grid has {size} points over {space.dim} "
                "parameters; use fewer points or a smaller space"
            )
        return grid

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return _GridSampler(self.grid(ctx.space), seed=ctx.seed)

    def max_trials(self, space: Space) -> int | None:
        return int(np.prod([len(v) for v in self.grid(space).values()]))

    def options(self) -> dict[str, Any]:
        return {"points": self.points, "values": self.values}


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler minus its ``study.stop()`` after the last point, which raises
    outside ``study.optimize``; the driver stops at the grid's size (``max_trials``)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


class NSGA2(Searcher):
    """NSGA-II with a population sized to the budget (Optuna's 50 is too large for ~100–500)."""

    name = "nsga2"

    def __init__(self, *, population_size: int | None = None) -> None:
        self.population_size = population_size

    def population(self, budget: int) -> int:
        if self.population_size is not None:
            return self.population_size
        return int(min(24, max(8, budget // 10)))

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(
            population_size=self.population(ctx.budget), seed=ctx.seed
        )

    def options(self) -> dict[str, Any]:
        return {"population_size": self.population_size}
