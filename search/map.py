"""MAP (Li et al., ICLR 2025): amortised Pareto fronts from quadratic surrogates.

``map`` evaluates a design of (N+1)(N+2) points of the space (the N one-hots, isotropic points
c₁ = … = c_N, the rest from a grid), every point on every task; ``map_bayesian`` starts from
part of that design and adds residual-directed points, one task at a time. At the end of a run
(:meth:`MAP.finalize`) each task's metric gets a quadratic surrogate through a sigmoid
(accuracies) or softplus (losses) link, fitted by least squares on every complete trial, and a
vectorised NSGA-II (population 100, 25 generations) on the surrogates gives the **predicted
front**, stored in the study attr ``map`` with each surrogate's cross-validated R².

Points live in u ∈ [0, 1]^d, mapped to each parameter's ``[low, high]`` (for a model-wise space
with the default bounds, u is λ itself). The design is proposed in order by a sampler whose
state is the study's trials (a point is taken when a complete, running or waiting trial holds
it), so parallel workers get distinct points and a resumed study carries on.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from mergesweep.errors import ConfigError
from mergesweep.search.base import SearchContext, Searcher, distributions
from mergesweep.search.nsga import nsga2
from mergesweep.search.surrogate import Quadratic, choose_link, cv_r2, fit_quadratic
from mergesweep.spaces.base import Space

if TYPE_CHECKING:
    from mergesweep.study import StudySetup

__all__ = [
    "MAP",
    "MAP_ATTR",
    "MAPBayesian",
    "MapSampler",
    "design_points",
    "fit_front",
    "residual_point",
    "task_info",
]

MAP_ATTR = "map"
_LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


def design_points(dim: int, total: int | None = None, *, isotropic: float = 0.2, seed: int = 0):
    """MAP's design in [0, 1]^dim: one-hots, then isotropic points t·1 (t = k/n_iso), then
    grid points in a seeded order; ``total`` defaults to (dim+1)(dim+2)."""
    total = (dim + 1) * (dim + 2) if total is None else total
    points = [tuple(row) for row in np.eye(dim)]
    n_iso = max(1, int(isotropic * (total - dim)))
    points += [(k / n_iso,) * dim for k in range(1, n_iso + 1)]
    levels = max(3, math.ceil((2 * (total - dim - n_iso)) ** (1 / dim)))
    while True:
        grid = [tuple(g) for g in itertools.product(np.linspace(0, 1, levels), repeat=dim)]
        taken = {tuple(np.round(p, 12)) for p in points}
        fresh = [g for g in grid if tuple(np.round(g, 12)) not in taken]
        if len(points) + len(fresh) >= total or levels > 50:
            break
        levels += 1
    order = np.random.default_rng(seed).permutation(len(fresh))
    unique = list(dict.fromkeys(tuple(np.round(p, 12)) for p in points))
    out = unique + [fresh[i] for i in order]
    return np.asarray(out[:total], dtype=np.float64)


def _to_params(space: Space, u: np.ndarray) -> dict[str, float]:
    return {
        p.name: float(p.low + float(np.clip(x, 0, 1)) * (p.high - p.low))
        for p, x in zip(space.params, u)
    }


def _to_u(space: Space, params: dict[str, float]) -> np.ndarray:
    return np.array([(params[p.name] - p.low) / (p.high - p.low) for p in space.params])


def _key(space: Space, params: dict[str, Any]) -> tuple[float, ...]:
    return tuple(round(float(params.get(p.name, math.nan)), 9) for p in space.params)


def task_info(study: optuna.Study) -> list[tuple[str, str, str]]:
    """``(task, metric, direction)`` per task, from the study's stored objectives (or, for
    studies made by hand, one ``value<i>`` per study value)."""
    from mergesweep.objectives import build_objective

    record = study.user_attrs.get("mergesweep") or {}
    tasks = (record.get("config") or {}).get("objectives", {}).get("tasks") or {}
    out = []
    for task, spec in tasks.items():
        try:
            obj = build_objective(task, dict(spec))
            out.append((task, obj.metric, obj.direction))
        except Exception:  # an objective that no longer builds: judge from its values
            out.append((task, str(spec.get("kind", "")), str(spec.get("direction", "maximize"))))
    if out:
        return out
    return [(f"value{i}", "", d.name.lower()) for i, d in enumerate(study.directions)]


def _observations(study: optuna.Study, space: Space, tasks: list[str]):
    """Points (u) and per-task scores of the complete trials that hold every task's score."""
    us, ys = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        metrics = t.user_attrs.get("metrics") or {
            f"value{i}": v for i, v in enumerate(t.values or [])
        }
        if all(k in metrics for k in tasks) and all(p.name in t.params for p in space.params):
            us.append(_to_u(space, t.params))
            ys.append([float(metrics[k]) for k in tasks])
    dim = space.dim
    return np.asarray(us).reshape(-1, dim), np.asarray(ys).reshape(-1, len(tasks))


def residual_point(
    u: np.ndarray,
    y: np.ndarray,
    model: Quadratic,
    rng: np.random.Generator,
    *,
    temperature: float = 0.07,
    lam: float = 0.5,
    radius: tuple[float, float] = (0.2, 0.8),
) -> np.ndarray:
    """Bayesian MAP's next point for one task: bins over the angles of u in the positive
    orthant, score = mean squared residual + ``lam``·bootstrap std (30 resamples dropping 20%),
    a bin drawn by softmax(score / temperature), an angle uniform in it, radius ~ U(radius)."""
    d = u.shape[1]
    r = rng.uniform(*radius)
    if d == 1:
        return np.array([r])
    res2 = (model.predict(u) - y) ** 2
    cum = np.sqrt(np.cumsum((u**2)[:, ::-1], axis=1)[:, ::-1])
    phi = np.arctan2(cum[:, 1:], u[:, :-1])  # d-1 angles in [0, π/2]
    n_bins = 4 if d < 4 else 2
    width = (np.pi / 2) / n_bins
    cell = np.minimum((phi // width).astype(int), n_bins - 1)
    bins = list(itertools.product(range(n_bins), repeat=d - 1))
    scores = np.full(len(bins), -np.inf)
    for b, combo in enumerate(bins):
        mask = np.all(cell == np.array(combo), axis=1)
        if not mask.any():
            continue
        idx = np.flatnonzero(mask)
        keep = max(1, len(idx) - int(0.2 * len(idx)))
        boots = [res2[rng.choice(idx, keep, replace=False)].mean() for _ in range(30)]
        scores[b] = res2[idx].mean() + lam * float(np.std(boots))
    if not np.isfinite(scores).any():
        scores[:] = 0.0
    z = np.where(np.isfinite(scores), (scores - scores[np.isfinite(scores)].max()), -np.inf)
    prob = np.exp(z / temperature)
    combo = np.array(bins[rng.choice(len(bins), p=prob / prob.sum())])
    theta = (combo + rng.uniform(size=d - 1)) * width
    x = np.empty(d)
    sin = np.concatenate([[1.0], np.cumprod(np.sin(theta))])
    x[:-1] = r * sin[:-1] * np.cos(theta)
    x[-1] = r * sin[-1]
    return np.clip(x, 0, 1)


class MapSampler(optuna.samplers.BaseSampler):
    """Proposes ``design`` (points in [0, 1]^d) in order, skipping points a trial holds; then
    ``extra(study, trial, rng)`` points, or uniform ones when there is none."""

    def __init__(self, space: Space, design: np.ndarray, seed: int, extra=None) -> None:
        self.space = space
        self.design = design
        self.seed = seed
        self.extra = extra
        self._dists = distributions(space)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return dict(self._dists)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space or trial.system_attrs.get("fixed_params"):
            return {}
        held = set()
        for t in study.get_trials(deepcopy=False, states=_LIVE):
            if t.number != trial.number:
                held.add(_key(self.space, t.system_attrs.get("fixed_params") or t.params))
        for u in self.design:
            params = _to_params(self.space, u)
            if _key(self.space, params) not in held:
                return params
        rng = np.random.default_rng([self.seed, trial.number])
        u = self.extra(study, trial, rng) if self.extra else None
        return _to_params(self.space, rng.uniform(size=self.space.dim) if u is None else u)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


def fit_front(
    u: np.ndarray,
    y: np.ndarray,
    tasks: list[tuple[str, str, str]],
    *,
    seed: int = 0,
    population: int = 100,
    generations: int = 25,
) -> dict[str, Any]:
    """Surrogates per task, their held-out R², and the predicted front over u ∈ [0, 1]^d."""
    models, r2 = [], {}
    for j, (task, metric, direction) in enumerate(tasks):
        link = choose_link(metric, direction, y[:, j])
        models.append(fit_quadratic(u, y[:, j], link))
        r2[task] = cv_r2(u, y[:, j], link, seed=seed)
    sign = np.array([-1.0 if d == "maximize" else 1.0 for _, _, d in tasks])

    def losses(x: np.ndarray) -> np.ndarray:
        return np.stack([m.predict(x) for m in models], axis=1) * sign

    fx, ff = nsga2(
        losses, u.shape[1], population=population, generations=generations, seed=seed, init=u
    )
    return {"models": models, "r2": r2, "u": fx, "predicted": ff * sign}


class MAP(Searcher):
    """Plain MAP: the (N+1)(N+2)-point design, then surrogates and the predicted front.

    Args:
        isotropic: share of the non-one-hot design points placed on the diagonal c₁ = … = c_N.
        population: NSGA-II population on the surrogates.
        generations: NSGA-II generations on the surrogates.
    """

    name = "map"

    def __init__(
        self, *, isotropic: float = 0.2, population: int = 100, generations: int = 25
    ) -> None:
        if not 0.0 <= isotropic < 1.0:
            raise ConfigError(f"searcher.options.isotropic: {isotropic} must lie in [0, 1)")
        if population < 4 or generations < 1:
            raise ConfigError("searcher.options.population/generations: need ≥ 4 and ≥ 1")
        self.isotropic = isotropic
        self.population = population
        self.generations = generations
        self.seed = 0

    def design(self, space: Space) -> np.ndarray:
        return design_points(space.dim, isotropic=self.isotropic, seed=self.seed)

    def _check(self, space: Space) -> None:
        bad = [p.name for p in space.params if p.log or p.step is not None]
        if bad:
            raise ConfigError(f"searcher.name: MAP needs continuous parameters; {bad[0]} is not")

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        self._check(ctx.space)
        self.seed = ctx.seed
        return MapSampler(ctx.space, self.design(ctx.space), ctx.seed)

    def max_trials(self, space: Space) -> int | None:
        return len(self.design(space))

    def options(self) -> dict[str, Any]:
        return {
            "isotropic": self.isotropic,
            "population": self.population,
            "generations": self.generations,
        }

    def finalize(self, setup: StudySetup) -> None:
        store_front(setup.study, setup.space, self.population, self.generations, setup.cfg.seed)


def store_front(
    study: optuna.Study, space: Space, population: int, generations: int, seed: int
) -> dict[str, Any] | None:
    """Fit the surrogates on the study's complete trials and store the predicted front."""
    tasks = task_info(study)
    u, y = _observations(study, space, [t for t, _, _ in tasks])
    if len(u) < 2:
        return None
    fit = fit_front(u, y, tasks, seed=seed, population=population, generations=generations)
    record = {
        "tasks": [t for t, _, _ in tasks],
        "directions": [d for _, _, d in tasks],
        "evaluations": len(u),
        "r2": {k: (None if math.isnan(v) else round(v, 6)) for k, v in fit["r2"].items()},
        "surrogates": {t: m.to_dict() for (t, _, _), m in zip(tasks, fit["models"])},
        "front": [
            {"params": _to_params(space, x), "predicted": dict(zip(record_tasks(tasks), p))}
            for x, p in zip(fit["u"], fit["predicted"].tolist())
        ],
    }
    study.set_user_attr(MAP_ATTR, record)
    return record


def record_tasks(tasks: list[tuple[str, str, str]]) -> list[str]:
    return [t for t, _, _ in tasks]


class MAPBayesian(MAP):
    """Bayesian MAP: ``initial_points`` of the design, then ``extra_points`` chosen where a
    task's surrogate misfits (tasks take turns), refitting before each one.

    Args:
        initial_points: design points first (default: ¾ of (N+1)(N+2)).
        extra_points: residual-directed points (default: the rest of (N+1)(N+2)).
        temperature: softmax temperature over the angle bins' scores.
        radius: the range of the radius of new points.
    """

    name = "map_bayesian"

    def __init__(
        self,
        *,
        initial_points: int | None = None,
        extra_points: int | None = None,
        temperature: float = 0.07,
        radius: tuple[float, float] | list[float] = (0.2, 0.8),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(radius) != 2 or not 0 <= radius[0] <= radius[1]:
            raise ConfigError("searcher.options.radius: expected [low, high] with 0 ≤ low ≤ high")
        if temperature <= 0:
            raise ConfigError("searcher.options.temperature: must be positive")
        self.initial_points = initial_points
        self.extra_points = extra_points
        self.temperature = temperature
        self.radius = (float(radius[0]), float(radius[1]))

    def counts(self, dim: int) -> tuple[int, int]:
        full = (dim + 1) * (dim + 2)
        first = self.initial_points or math.ceil(0.75 * full)
        need = (dim + 1) * (dim + 2) // 2 + 1
        if first < need:
            raise ConfigError(
                f"searcher.options.initial_points: {first} cannot fit a quadratic in {dim} "
                f"variables; use at least {need}"
            )
        return first, full - first if self.extra_points is None else self.extra_points

    def design(self, space: Space) -> np.ndarray:
        full = design_points(space.dim, isotropic=self.isotropic, seed=self.seed)
        return full[: self.counts(space.dim)[0]]

    def max_trials(self, space: Space) -> int | None:
        return sum(self.counts(space.dim))

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        self._check(ctx.space)
        self.seed = ctx.seed
        space = ctx.space

        def extra(study: optuna.Study, trial: Any, rng: np.random.Generator) -> np.ndarray:
            tasks = task_info(study)
            u, y = _observations(study, space, record_tasks(tasks))
            if len(u) < 2:
                return rng.uniform(size=space.dim)
            j = max(0, len(u) - len(self.design(space))) % len(tasks)
            _, metric, direction = tasks[j]
            model = fit_quadratic(u, y[:, j], choose_link(metric, direction, y[:, j]))
            return residual_point(
                u, y[:, j], model, rng, temperature=self.temperature, radius=self.radius
            )

        return MapSampler(space, self.design(space), ctx.seed, extra)

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "initial_points": self.initial_points,
            "extra_points": self.extra_points,
            "temperature": self.temperature,
            "radius": list(self.radius),
        }
