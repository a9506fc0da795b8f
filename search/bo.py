"""Bayesian optimisation on BoTorch: the ``bo`` searcher and DF-Merge's ``dfmerge`` recipe.

:class:`BoSampler` is an Optuna sampler without state of its own: every suggestion refits the
surrogate on the study's complete trials, so a resumed study (or a second driver on the same
storage) carries on exactly where the stored trials leave it. Points are normalised to the
unit cube (log parameters in log space), objective values are standardised by the GP's outcome
transform, and trials still running elsewhere are passed as ``X_pending`` so parallel workers
get distinct points. The first ``n_initial`` trials are uniform random points seeded by the
study seed and the trial number.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from mergesweep.errors import ConfigError
from mergesweep.search.base import SearchContext, Searcher, distributions

__all__ = ["BayesOpt", "BoSampler", "DFMergeSearch"]

logger = logging.getLogger(__name__)

ACQUISITIONS = ("auto", "logei", "ucb", "qlognehvi")
MODELS = ("gp", "saas", "turbo")
KERNELS = ("default", "matern")
SYSTEM_ATTR = "mergesweep_bo"  # per-trial record of how its point was chosen


class _Cube:
    """Float distributions ↔ the unit cube (log distributions in log space)."""

    def __init__(self, dists: dict[str, BaseDistribution]) -> None:
        self.names = list(dists)
        self.dists: list[FloatDistribution] = []
        for name, d in dists.items():
            if not isinstance(d, FloatDistribution):
                raise ConfigError(f"searcher.name: bo searches floats; '{name}' is {d}")
            self.dists.append(d)

    def _ends(self, d: FloatDistribution) -> tuple[float, float]:
        return (np.log(d.low), np.log(d.high)) if d.log else (d.low, d.high)

    def to_unit(self, params: dict[str, float]) -> np.ndarray:
        out = []
        for name, d in zip(self.names, self.dists):
            lo, hi = self._ends(d)
            v = np.log(params[name]) if d.log else params[name]
            out.append(0.5 if hi == lo else (v - lo) / (hi - lo))
        return np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)

    def from_unit(self, x: np.ndarray) -> dict[str, float]:
        out = {}
        for name, d, u in zip(self.names, self.dists, np.clip(x, 0.0, 1.0)):
            lo, hi = self._ends(d)
            v = lo + float(u) * (hi - lo)
            v = float(np.exp(v)) if d.log else v
            if d.step is not None:
                v = d.low + round((v - d.low) / d.step) * d.step
            out[name] = float(min(max(v, d.low), d.high))
        return out


class BoSampler(optuna.samplers.BaseSampler):
    """GP-based BO over a fixed set of float parameters (see the module docstring).

    Args:
        dists: the space's parameters as Optuna distributions.
        seed: the study seed.
        n_initial: random trials before the first model-based one.
        timeout_s: wall-clock bound per suggestion (fit + acquisition optimisation).
        settings: the numerics (:class:`mergesweep.search._botorch.Settings`).
        threads: torch threads during a suggestion (``None``: unchanged).
    """

    def __init__(
        self,
        dists: dict[str, BaseDistribution],
        *,
        seed: int,
        n_initial: int,
        timeout_s: float,
        settings: Any,
        threads: int | None = None,
    ) -> None:
        self.dists = dict(dists)
        self.threads = threads
        self.cube = _Cube(self.dists)
        self.seed = seed
        self.n_initial = n_initial
        self.timeout_s = timeout_s
        self.settings = settings

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self.dists)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        fixed = trial.system_attrs.get("fixed_params", {})
        if all(n in fixed for n in search_space):  # an enqueued point: nothing to choose
            return {}
        names = self.cube.names
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE and t.values and all(n in t.params for n in names)
        ]
        pending = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and t.number != trial.number
            and all(n in t.params for n in names)
        ]
        if len(complete) + len(pending) < self.n_initial or len(complete) < 2:
            return self._random(trial.number, study, trial)
        try:
            return self._model_based(study, trial, complete, pending)
        except Exception as exc:  # a failed fit must not stop the sweep: this point is random
            logger.warning("bo: trial %d falls back to a random point (%s)", trial.number, exc)
            return self._random(trial.number, study, trial, reason=f"{type(exc).__name__}")

    def _random(
        self, number: int, study: optuna.Study, trial: FrozenTrial, reason: str = "initial"
    ) -> dict[str, float]:
        rng = np.random.default_rng([self.seed, number])
        self._record(study, trial, {"kind": "random", "reason": reason})
        return self.cube.from_unit(rng.uniform(size=len(self.cube.names)))

    def _model_based(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        complete: list[FrozenTrial],
        pending: list[FrozenTrial],
    ) -> dict[str, float]:
        import torch

        from mergesweep.search._botorch import DTYPE, suggest, turbo_state

        signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
        complete = sorted(complete, key=lambda t: t.number)
        X = torch.tensor(np.stack([self.cube.to_unit(t.params) for t in complete]), dtype=DTYPE)
        Y = torch.tensor([[s * v for s, v in zip(signs, t.values)] for t in complete], dtype=DTYPE)
        X_pending = None
        if pending:
            X_pending = torch.tensor(
                np.stack([self.cube.to_unit(t.params) for t in pending]), dtype=DTYPE
            )
        turbo = None
        if self.settings.model == "turbo":
            turbo = turbo_state(Y[:, 0].tolist(), self.n_initial, X.shape[1], self.settings)
        seed = int(np.random.default_rng([self.seed, trial.number]).integers(2**31 - 1))
        before = torch.get_num_threads()
        try:
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            x, info = suggest(
                X, Y, X_pending, self.settings, seed=seed, timeout_s=self.timeout_s, turbo=turbo
            )
        finally:
            torch.set_num_threads(before)
        info.update(kind=self.settings.model, observed=len(complete), pending=len(pending))
        if turbo is not None:
            info.update(tr_length=round(turbo.length, 6), tr_restarts=turbo.restarts)
        self._record(study, trial, info)
        return self.cube.from_unit(x.numpy())

    @staticmethod
    def _record(study: optuna.Study, trial: FrozenTrial, info: dict[str, Any]) -> None:
        study._storage.set_trial_system_attr(trial._trial_id, SYSTEM_ATTR, info)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # Only parameters outside the space reach here (none, for mergesweep's own driver).
        rng = np.random.default_rng([self.seed, trial.number, len(param_name)])
        return _Cube({param_name: param_distribution}).from_unit(rng.uniform(size=1))[param_name]


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"searcher.options.{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _number(value: Any, key: str, *, low: float, integer: bool = False, allow_none=False):
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < low:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"searcher.options.{key}: expected {kind} ≥ {low}, got {value!r}")
    return value if integer else float(value)


class BayesOpt(Searcher):
    """Bayesian optimisation with a BoTorch GP (``pip install 'mergesweep[bo]'``).

    Args:
        n_initial: uniform random trials (seeded) before the model-based ones.
        acquisition: ``logei`` (log expected improvement) or ``ucb`` for one objective,
            ``qlognehvi`` (log noisy expected hypervolume improvement) for several; ``auto``
            picks ``logei`` or ``qlognehvi``.
        kappa: UCB's exploration weight, μ + κσ (2.576 as in DF-Merge).
        xi: EI's margin: improvement is counted over best + ``xi`` (objective units).
        model: ``gp`` (exact GP), ``saas`` (sparse-axis prior, fully Bayesian with NUTS:
            for tens to hundreds of coefficients; needs ``mergesweep[saas]``) or ``turbo``
            (the GP searched inside TuRBO's trust region around the incumbent; one objective).
        kernel: ``default`` (BoTorch's RBF with dimension-scaled priors) or ``matern`` (ν = 2.5).
        timeout_s: wall-clock bound per suggestion (the fit gets at most half of it).
        num_restarts, raw_samples: acquisition optimisation (multi-start L-BFGS-B).
        mc_samples: quasi-MC samples of the acquisition.
        saas_warmup, saas_samples, saas_thinning: NUTS settings of ``model: saas``.
        turbo_success, turbo_failure: TuRBO's success/failure counts that grow/shrink the
            trust region (failure default: max(4, dimension)).
        threads: torch threads while a suggestion is computed (``None``: leave the driver's
            setting; 1 is fastest on a busy small machine).
    """

    name = "bo"
    multi_objective = True
    defaults: ClassVar[dict[str, Any]] = {
        "n_initial": 10,
        "acquisition": "auto",
        "xi": 0.0,
        "kernel": "default",
    }

    def __init__(
        self,
        *,
        n_initial: int | None = None,
        acquisition: str | None = None,
        kappa: float = 2.576,
        xi: float | None = None,
        model: str = "gp",
        kernel: str | None = None,
        timeout_s: float = 60.0,
        num_restarts: int = 8,
        raw_samples: int = 256,
        mc_samples: int = 128,
        saas_warmup: int = 128,
        saas_samples: int = 64,
        saas_thinning: int = 8,
        turbo_success: int = 3,
        turbo_failure: int | None = None,
        threads: int | None = None,
    ) -> None:
        d = self.defaults
        self.n_initial = _number(
            d["n_initial"] if n_initial is None else n_initial, "n_initial", low=1, integer=True
        )
        self.acquisition = _choice(
            d["acquisition"] if acquisition is None else acquisition, "acquisition", ACQUISITIONS
        )
        self.kappa = _number(kappa, "kappa", low=0.0)
        self.xi = _number(d["xi"] if xi is None else xi, "xi", low=0.0)
        self.model = _choice(model, "model", MODELS)
        self.kernel = _choice(d["kernel"] if kernel is None else kernel, "kernel", KERNELS)
        self.timeout_s = _number(timeout_s, "timeout_s", low=0.1)
        self.num_restarts = _number(num_restarts, "num_restarts", low=1, integer=True)
        self.raw_samples = _number(raw_samples, "raw_samples", low=num_restarts, integer=True)
        self.mc_samples = _number(mc_samples, "mc_samples", low=1, integer=True)
        self.saas_warmup = _number(saas_warmup, "saas_warmup", low=1, integer=True)
        self.saas_samples = _number(saas_samples, "saas_samples", low=1, integer=True)
        self.saas_thinning = _number(saas_thinning, "saas_thinning", low=1, integer=True)
        self.turbo_success = _number(turbo_success, "turbo_success", low=1, integer=True)
        self.turbo_failure = _number(
            turbo_failure, "turbo_failure", low=1, integer=True, allow_none=True
        )
        self.threads = _number(threads, "threads", low=1, integer=True, allow_none=True)

    def _resolved_acquisition(self, n_objectives: int) -> str:
        acq = self.acquisition
        if acq == "auto":
            return "logei" if n_objectives == 1 else "qlognehvi"
        if n_objectives > 1 and acq != "qlognehvi":
            raise ConfigError(
                f"searcher.options.acquisition: '{acq}' handles one objective; "
                f"objectives.mode 'pareto' ({n_objectives} objectives) needs 'qlognehvi'"
            )
        if n_objectives == 1 and acq == "qlognehvi":
            raise ConfigError(
                "searcher.options.acquisition: 'qlognehvi' needs several objectives "
                "(objectives.mode: pareto); use 'logei' or 'ucb'"
            )
        return acq

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        from mergesweep.search._botorch import Settings

        if importlib.util.find_spec("botorch") is None:
            raise ConfigError(
                f"searcher.name: '{self.name}' needs botorch; pip install 'mergesweep[bo]'"
            )
        if self.model == "saas" and importlib.util.find_spec("numpyro") is None:
            raise ConfigError(
                "searcher.options.model: 'saas' needs numpyro; pip install 'mergesweep[saas]'"
            )
        n_obj = len(ctx.directions)
        acquisition = self._resolved_acquisition(n_obj)
        if self.model == "turbo" and n_obj > 1:
            raise ConfigError("searcher.options.model: 'turbo' handles one objective")
        settings = Settings(
            acquisition=acquisition,
            kappa=self.kappa,
            xi=self.xi,
            model=self.model,
            kernel=self.kernel,
            num_restarts=self.num_restarts,
            raw_samples=self.raw_samples,
            mc_samples=self.mc_samples,
            saas_warmup=self.saas_warmup,
            saas_samples=self.saas_samples,
            saas_thinning=self.saas_thinning,
            turbo_success=self.turbo_success,
            turbo_failure=self.turbo_failure,
        )
        return BoSampler(
            distributions(ctx.space),
            seed=ctx.seed,
            n_initial=self.n_initial,
            timeout_s=self.timeout_s,
            settings=settings,
            threads=self.threads,
        )

    def options(self) -> dict[str, Any]:
        keys = (
            "n_initial acquisition kappa xi model kernel timeout_s num_restarts raw_samples "
            "mc_samples saas_warmup saas_samples saas_thinning turbo_success turbo_failure threads"
        )
        return {k: getattr(self, k) for k in keys.split()}


class DFMergeSearch(BayesOpt):
    """DF-Merge's search (Lee et al., 2025): BO over model-wise λ ∈ [0, 1]^N.

    The paper's settings as defaults: 10 random initial points, then EI with ξ = 0.01 (here
    log-EI, which has the same maximiser and better numerics: ``best_f = best + 0.01``) on a
    Matérn-5/2 GP; ``acquisition: ucb`` gives UCB with κ = 2.576. Use it with
    ``method: dfmerge``, ``space: modelwise`` and ``budget.trials: 60`` (10 + 50 BO steps).
    """

    name = "dfmerge"
    defaults: ClassVar[dict[str, Any]] = {
        "n_initial": 10,
        "acquisition": "logei",
        "xi": 0.01,
        "kernel": "matern",
    }
