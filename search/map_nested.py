"""Nested MAP: N − 1 pairwise merges, each a 2-D MAP, picked by preference.

Each expert alone (its one-hot point) is scored on its own tasks first. Then, repeatedly, the
two (merged) models whose scores are closest are merged: a 2-D design of ``points`` (c_a, c_b)
gives the trials θ₀ + c_a·v_a + c_b·v_b (a merged model's v is its own combination of task
vectors, so every trial is a point of the model-wise space), each of the pair's tasks gets a
quadratic surrogate in (c_a, c_b), NSGA-II on them gives the pair's predicted front, and the
point maximising the preference-weighted, normalised sum is evaluated and becomes the new
model. The last merge's front (over every task) is stored as the study's ``map`` attr.

Phases wait for their trials, so this searcher runs its own loop (:meth:`NestedMAP.drive`)
through :func:`mergesweep.driver.evaluate_points`; everything is derived again from the stored
trials on resume (points already evaluated are not run again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from mergesweep.errors import ConfigError
from mergesweep.pareto import prefer_index
from mergesweep.search.base import SearchContext
from mergesweep.search.map import (
    MAP,
    MAP_ATTR,
    MapSampler,
    _key,
    _to_params,
    design_points,
    fit_front,
    task_info,
)
from mergesweep.spaces.base import Space

if TYPE_CHECKING:
    from mergesweep.runtime.base import Executor
    from mergesweep.study import StudySetup

__all__ = ["NESTED_ATTR", "NestedMAP"]

NESTED_ATTR = "map_nested"


class NestedMAP(MAP):
    """Nested MAP over a model-wise space (one ``lambda.<expert>`` per expert).

    Args:
        points: 2-D design points per merge (20 in the paper).
        preference: ``{task: weight}`` for the picks (default: equal weights).
        isotropic, population, generations: as for ``map``.
    """

    name = "map_nested"

    def __init__(
        self, *, points: int = 20, preference: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if points < 7:
            raise ConfigError("searcher.options.points: a 2-D quadratic needs at least 7 points")
        if preference and any(w < 0 for w in preference.values()):
            raise ConfigError("searcher.options.preference: weights must be non-negative")
        self.points = points
        self.preference = dict(preference or {})

    def options(self) -> dict[str, Any]:
        return {**super().options(), "points": self.points, "preference": self.preference}

    def max_trials(self, space: Space) -> int | None:
        n = space.dim
        return n + (n - 1) * (self.points + 1)

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        # Used only when the study is stepped by hand (ask/tell): the plain design. The real
        # search is ``drive``.
        self._check(ctx.space)
        self.seed = ctx.seed
        return MapSampler(ctx.space, design_points(ctx.space.dim, seed=ctx.seed), ctx.seed)

    def _experts(self, setup: StudySetup) -> list[str]:
        names = [p.name for p in setup.space.params]
        experts = list(setup.layout.experts)
        if names != [f"lambda.{e}" for e in experts]:
            raise ConfigError(
                "space.kind: map_nested needs a model-wise space (one lambda.<expert> per "
                f"expert); this space has {names[:4]}"
            )
        return experts

    def drive(self, setup: StudySetup, executor: Executor, budget: int) -> bool:
        from mergesweep.driver import complete_count

        experts = self._experts(setup)
        tasks = task_info(setup.study)
        names = [t for t, _, _ in tasks]
        direction = {t: d for t, _, d in tasks}
        heads = {t: getattr(setup.objectives[t], "head", t) for t in names}
        unknown = sorted(set(self.preference) - set(names))
        if unknown:
            raise ConfigError(f"searcher.options.preference: unknown task(s) {unknown}")
        n = len(experts)
        # Each model: its weight vector over the experts (u-space), its tasks, its score.
        models = []
        onehots = [_to_params(setup.space, row) for row in np.eye(n)]
        for e, trial in zip(experts, self._run(setup, executor, onehots, {"map_nested": "expert"})):
            own = [t for t in names if heads[t] == e] or names
            w = np.eye(n)[experts.index(e)]
            models.append({"name": e, "w": w, "tasks": own, "score": _score(trial, own)})
        merges: list[dict[str, Any]] = []
        design = design_points(2, self.points, isotropic=self.isotropic, seed=self.seed)
        while len(models) > 1 and complete_count(setup.study) < budget:
            a, b = _closest(models)
            ma, mb = models[a], models[b]
            group = ma["tasks"] + [t for t in mb["tasks"] if t not in ma["tasks"]]
            points = [_to_params(setup.space, c[0] * ma["w"] + c[1] * mb["w"]) for c in design]
            label = f"{ma['name']}+{mb['name']}"
            trials = self._run(setup, executor, points, {"map_nested": label})
            c = np.array([design[i] for i, t in enumerate(trials) if t is not None])
            y = np.array([[t.user_attrs["metrics"][k] for k in group] for t in trials if t])
            info = [tt for tt in tasks if tt[0] in group]
            info.sort(key=lambda tt: group.index(tt[0]))
            fit = fit_front(
                c,
                y,
                info,
                seed=self.seed,
                population=self.population,
                generations=self.generations,
            )
            weights = np.array(
                [self.preference.get(t, 1.0 if not self.preference else 0.0) for t in group]
            )
            if not weights.sum() > 0:
                weights = np.ones(len(group))
            pick_c = fit["u"][
                prefer_index(
                    fit["predicted"],
                    [direction[t] for t in group],
                    weights / np.linalg.norm(weights),
                )
            ]
            w = pick_c[0] * ma["w"] + pick_c[1] * mb["w"]
            (picked,) = self._run(
                setup, executor, [_to_params(setup.space, w)], {"map_nested": f"{label}:pick"}
            )
            merged = {
                "name": label,
                "w": w,
                "tasks": group,
                "score": _score(picked, group) if picked else float("nan"),
            }
            merges.append(
                {
                    "pair": [ma["name"], mb["name"]],
                    "tasks": group,
                    "pick_c": pick_c.tolist(),
                    "params": _to_params(setup.space, w),
                    "trial": picked.number if picked else None,
                    "r2": fit["r2"],
                    "front_size": len(fit["u"]),
                }
            )
            models = [m for i, m in enumerate(models) if i not in (a, b)] + [merged]
            if len(models) == 1:
                self._store_last(setup, ma, mb, info, fit, len(c))
        setup.study.set_user_attr(NESTED_ATTR, {"merges": merges})
        return True

    def _run(self, setup, executor, points, attrs) -> list[optuna.trial.FrozenTrial | None]:
        """The complete trial of each point: found in the study, else evaluated now."""
        from mergesweep.driver import evaluate_points

        have = {
            _key(setup.space, t.params): t
            for t in setup.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("metrics")
        }
        todo = [p for p in points if _key(setup.space, p) not in have]
        todo = list({_key(setup.space, p): p for p in todo}.values())
        for t in evaluate_points(setup, executor, todo, user_attrs=attrs):
            have[_key(setup.space, t.params)] = t
        return [have.get(_key(setup.space, p)) for p in points]

    def _store_last(self, setup, ma, mb, info, fit, evaluations: int) -> None:
        front = []
        for c, pred in zip(fit["u"], fit["predicted"].tolist()):
            params = _to_params(setup.space, c[0] * ma["w"] + c[1] * mb["w"])
            front.append({"params": params, "predicted": dict(zip([t for t, _, _ in info], pred))})
        setup.study.set_user_attr(
            MAP_ATTR,
            {
                "tasks": [t for t, _, _ in info],
                "directions": [d for _, _, d in info],
                "evaluations": evaluations,
                "r2": {
                    k: (None if np.isnan(v) else round(float(v), 6)) for k, v in fit["r2"].items()
                },
                "surrogates": {t: m.to_dict() for (t, _, _), m in zip(info, fit["models"])},
                "space": "2-D (c_a, c_b) of the last merge",
                "front": front,
            },
        )

    def finalize(self, setup: StudySetup) -> None:
        """The front was stored by the last merge (``drive``)."""


def _score(trial: optuna.trial.FrozenTrial | None, tasks: list[str]) -> float:
    if trial is None:
        return float("nan")
    m = trial.user_attrs["metrics"]
    return float(np.mean([m[t] for t in tasks]))


def _closest(models: list[dict[str, Any]]) -> tuple[int, int]:
    """The pair of models with the closest scores (first pair in order on ties)."""
    best, pair = np.inf, (0, 1)
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            gap = abs(models[i]["score"] - models[j]["score"])
            if gap < best:
                best, pair = gap, (i, j)
    return pair
