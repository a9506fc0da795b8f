"""Evo-Merging (Chen et al., 2025): two-stage CMA-ES over densities, then signed scales.

Over a ``density`` space (``density.<e>`` α ∈ [0, 1] and ``lambda.<e>`` β, with the
``magnitude`` merge method: θ = θ₀ + Σ βᵢ·TopMag_αᵢ(τᵢ)):

- stage 1 searches α from α = 1 with β fixed at 1/N (``stage1_trials`` trials);
- stage 2 searches β from 1/N with α fixed at stage 1's best (``stage2_trials`` trials).

CMA-ES (``cmaes``) runs with population 20 and σ₀ 0.05. The study value is the aggregated
metric plus ``penalty``·mean|x| (x: the stage's vector), added by :meth:`transform_values`
(subtracted for a maximised metric). Fitness as in the paper: ``cross_entropy`` on a fixed
labelled subset.

Everything is derived from the stored trials, so a resumed study continues in its stage: a
trial's stage is read from its point (stage-1 points hold β at exactly the fixed 1/N), the
CMA-ES state is replayed from the complete trials of the stage (each sampled trial records its
generation), and stage 2's α is the α of its first trial. There is no generation barrier: like
Optuna's CmaEsSampler, asks continue from the current generation, which is told as soon as
``popsize`` of its trials are complete (later ones are still recorded). A space without
``density.*`` parameters (e.g. model-wise) runs stage 2 only; one without ``lambda.*``, stage 1
only.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from mergesweep.errors import ConfigError
from mergesweep.search.base import SearchContext, Searcher, distributions
from mergesweep.spaces.base import Space

__all__ = ["EvoMerging", "EvoSampler"]

GEN_ATTR = "evo:generation"


class EvoMerging(Searcher):
    """Two-stage CMA-ES (densities, then signed scales) with a penalty on the point.

    Args:
        stage1_trials: trials of stage 1 (densities).
        stage2_trials: trials of stage 2 (scales).
        popsize: CMA-ES population.
        sigma0: CMA-ES initial step size.
        penalty: weight of mean|x| added to the study value.
        stage1_lambda: the fixed β of stage 1 (default 1/N).
        lambda_init: stage 2's start β (default 1/N).
    """

    name = "evo_merging"
    multi_objective = False

    def __init__(
        self,
        *,
        stage1_trials: int = 400,
        stage2_trials: int = 800,
        popsize: int = 20,
        sigma0: float = 0.05,
        penalty: float = 0.05,
        stage1_lambda: float | None = None,
        lambda_init: float | None = None,
    ) -> None:
        if stage1_trials < 0 or stage2_trials < 0 or stage1_trials + stage2_trials < 1:
            raise ConfigError("searcher.options.stage1_trials/stage2_trials: need ≥ 0, sum ≥ 1")
        if popsize < 2 or sigma0 <= 0:
            raise ConfigError("searcher.options.popsize/sigma0: need popsize ≥ 2 and sigma0 > 0")
        self.stage1_trials = stage1_trials
        self.stage2_trials = stage2_trials
        self.popsize = popsize
        self.sigma0 = sigma0
        self.penalty = penalty
        self.stage1_lambda = stage1_lambda
        self.lambda_init = lambda_init
        self._sign = 1.0
        self._stages: Stages | None = None

    def options(self) -> dict[str, Any]:
        return {
            "stage1_trials": self.stage1_trials,
            "stage2_trials": self.stage2_trials,
            "popsize": self.popsize,
            "sigma0": self.sigma0,
            "penalty": self.penalty,
            "stage1_lambda": self.stage1_lambda,
            "lambda_init": self.lambda_init,
        }

    def stages(self, space: Space) -> Stages:
        if self._stages is None or self._stages.space is not space:
            self._stages = Stages(space, self)
        return self._stages

    def max_trials(self, space: Space) -> int | None:
        st = self.stages(space)
        return (self.stage1_trials if st.alpha else 0) + (self.stage2_trials if st.beta else 0)

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        self._sign = -1.0 if ctx.directions[0] == "maximize" else 1.0
        return EvoSampler(self.stages(ctx.space), self, ctx.seed, ctx.directions[0])

    def transform_values(self, values: list[float], params: dict[str, float]) -> list[float]:
        if self._stages is None:
            return values
        x = self._stages.vector(params)
        return [values[0] + self._sign * self.penalty * float(np.mean(np.abs(x)))]


class Stages:
    """The two stages' parameters over one space, and which stage a point belongs to."""

    def __init__(self, space: Space, evo: EvoMerging) -> None:
        self.space = space
        self.alpha = [p for p in space.params if p.name.startswith("density.")]
        self.beta = [p for p in space.params if not p.name.startswith("density.")]
        n = max(1, len(self.alpha) or len(self.beta))
        fixed = 1.0 / n if evo.stage1_lambda is None else evo.stage1_lambda
        start = 1.0 / n if evo.lambda_init is None else evo.lambda_init
        for p in self.beta:
            if self.alpha and not p.low <= fixed <= p.high:
                raise ConfigError(
                    f"searcher.options.stage1_lambda: {fixed} lies outside {p.name}'s bounds"
                )
        self.fixed_beta = {p.name: float(fixed) for p in self.beta}
        self.beta0 = np.array([float(np.clip(start, p.low, p.high)) for p in self.beta])
        self.alpha0 = np.array([p.high for p in self.alpha])  # α = 1: keep everything

    def stage_of(self, params: dict[str, Any]) -> int:
        if not self.alpha:
            return 2
        if not self.beta:
            return 1
        same = all(abs(params.get(k, np.nan) - v) <= 1e-12 for k, v in self.fixed_beta.items())
        return 1 if same else 2

    def vector(self, params: dict[str, float]) -> np.ndarray:
        names = self.alpha if self.stage_of(params) == 1 else self.beta
        return np.array([params[p.name] for p in names])


class EvoSampler(optuna.samplers.BaseSampler):
    """CMA-ES per stage, its state replayed from the stage's complete trials."""

    def __init__(self, stages: Stages, evo: EvoMerging, seed: int, direction: str) -> None:
        self.stages = stages
        self.evo = evo
        self.seed = seed
        self.minimize = direction == "minimize"
        self._dists = distributions(stages.space)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return dict(self._dists)

    def current_stage(self, trials: list[optuna.trial.FrozenTrial]) -> int:
        st = self.stages
        if not st.alpha or not st.beta:
            return 1 if st.alpha else 2
        done1 = sum(1 for t in trials if st.stage_of(t.params) == 1)
        return 1 if done1 < self.evo.stage1_trials else 2

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space or trial.system_attrs.get("fixed_params"):
            return {}
        st = self.stages
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        stage = self.current_stage(complete)
        mine = [t for t in complete if st.stage_of(t.params) == stage]
        if stage == 1:
            names, x0, fixed = st.alpha, st.alpha0, dict(st.fixed_beta)
        else:
            names, x0, fixed = st.beta, st.beta0, self._stage2_alpha(study, complete)
        cma = self._replay(names, x0, mine, stage, trial.number)
        x = cma.ask()
        study._storage.set_trial_system_attr(trial._trial_id, GEN_ATTR, [stage, cma.generation])
        return {**fixed, **{p.name: float(v) for p, v in zip(names, x)}}

    def _stage2_alpha(self, study, complete) -> dict[str, float]:
        """α of stage 2: that of its first trial if any, else stage 1's best point."""
        st = self.stages
        live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        for t in sorted(live, key=lambda t: t.number):
            if t.params and st.stage_of(t.params) == 2:
                return {p.name: t.params[p.name] for p in st.alpha}
        first = [t for t in complete if st.stage_of(t.params) == 1]
        if not first:
            return {p.name: float(v) for p, v in zip(st.alpha, st.alpha0)}
        best = min(first, key=lambda t: (t.value if self.minimize else -t.value, t.number))
        return {p.name: best.params[p.name] for p in st.alpha}

    def _replay(self, names, x0, trials, stage: int, number: int):
        """A CMA-ES at the current generation: every generation with ``popsize`` complete
        trials told in order; seeded per trial so each ask differs."""
        import cmaes

        bounds = np.array([[p.low, p.high] for p in names])
        seed = zlib.crc32(f"{self.seed}:{stage}:{number}".encode()) % (2**31 - 1)
        with np.errstate(divide="ignore"):  # tiny populations make cmaes divide by zero
            cma = cmaes.CMA(
                mean=np.asarray(x0, dtype=np.float64),
                sigma=self.evo.sigma0,
                bounds=bounds,
                seed=seed,
                population_size=self.evo.popsize,
            )
        by_gen: dict[int, list[optuna.trial.FrozenTrial]] = {}
        for t in trials:
            tag = t.system_attrs.get(GEN_ATTR)
            if tag and tag[0] == stage:
                by_gen.setdefault(int(tag[1]), []).append(t)
        while len(by_gen.get(cma.generation, [])) >= cma.population_size:
            batch = sorted(by_gen[cma.generation], key=lambda t: t.number)[: cma.population_size]
            sign = 1.0 if self.minimize else -1.0
            cma.tell([(np.array([t.params[p.name] for p in names]), sign * t.value) for t in batch])
        return cma

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)
