"""Pareto fronts: non-dominated sets, hypervolume, preference picks, and the per-trial tracker.

Conventions: ``values`` is an ``(n, d)`` array of scores, ``directions`` one ``"maximize"`` or
``"minimize"`` per column. Internally every column is turned into a loss (maximised columns are
negated), so "dominates" means "no worse everywhere, better somewhere".

The hypervolume of a study is measured against a **reference point**: the base model's scores
(θ₀ with each task's head, evaluated once on a worker when a multi-objective study first runs
and stored in the study attr ``mergesweep_pareto``), or, when the base cannot be evaluated, the
worst score per objective among the complete trials (which moves as trials arrive). Points no
better than the reference in some objective add nothing.

Example:
    >>> import numpy as np
    >>> pts = np.array([[0.9, 0.2], [0.5, 0.5], [0.4, 0.4]])
    >>> nondominated(pts, ["maximize", "maximize"]).tolist()
    [True, True, False]
    >>> round(hypervolume(pts, [0.0, 0.0], ["maximize", "maximize"]), 4)
    0.33
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mergesweep.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from mergesweep.runtime.base import Executor
    from mergesweep.study import StudySetup

__all__ = [
    "PARETO_ATTR",
    "HypervolumeTracker",
    "base_scores",
    "hypervolume",
    "nondominated",
    "parse_prefer",
    "prefer_index",
    "preference_weights",
    "study_hypervolume",
]

PARETO_ATTR = "mergesweep_pareto"  # study attr: {"reference": [...], "source": "base"|"worst"}


def _as_loss(values: Any, directions: Sequence[str]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(-1, len(directions)) if v.size else np.zeros((0, len(directions)))
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return v * sign


def _nondominated_loss(loss: np.ndarray) -> np.ndarray:
    """Mask of rows of ``loss`` no other row dominates (duplicates all kept)."""
    if len(loss) == 0:
        return np.zeros(0, dtype=bool)
    le = np.all(loss[:, None, :] <= loss[None, :, :], axis=2)  # [j, i]: j no worse than i
    lt = np.any(loss[:, None, :] < loss[None, :, :], axis=2)
    return ~np.any(le & lt, axis=0)


def nondominated(values: Any, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (the Pareto front).

    Args:
        values: ``(n, d)`` scores.
        directions: ``"maximize"`` / ``"minimize"`` per column.
    """
    return _nondominated_loss(_as_loss(values, directions))


def _hv_loss(loss: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of loss points below ``ref`` (slicing on the last objective)."""
    if len(loss) == 0:
        return 0.0
    d = loss.shape[1]
    if d == 1:
        return float(ref[0] - loss[:, 0].min())
    if d == 2:
        order = np.lexsort((loss[:, 1], loss[:, 0]))
        hv, prev = 0.0, ref[1]
        for x, y in loss[order]:
            if y < prev:
                hv += (ref[0] - x) * (prev - y)
                prev = y
        return float(hv)
    pts = loss[np.argsort(loss[:, -1], kind="stable")]
    hv = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        depth = upper - pts[i, -1]
        if depth > 0:
            head = pts[: i + 1, :-1]
            hv += depth * _hv_loss(head[_nondominated_loss(head)], ref[:-1])
    return float(hv)


def hypervolume(values: Any, reference: Sequence[float], directions: Sequence[str]) -> float:
    """The volume dominated by ``values`` and bounded by ``reference`` (exact).

    Args:
        values: ``(n, d)`` scores (dominated rows are allowed and add nothing).
        reference: one score per objective, worse than the points that should count.
        directions: ``"maximize"`` / ``"minimize"`` per column.
    """
    loss = _as_loss(values, directions)
    ref = _as_loss([reference], directions)[0]
    loss = loss[np.all(loss < ref, axis=1)]
    if len(loss) == 0:
        return 0.0
    return _hv_loss(loss[_nondominated_loss(loss)], ref)


# -- preferences ----------------------------------------------------------------------------
def parse_prefer(text: str, names: Sequence[str]) -> dict[str, float]:
    """``"topic=2,langid=1"`` → ``{"topic": 2.0, "langid": 1.0}``; unnamed tasks weigh 0."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"--prefer: '{item}' is not TASK=WEIGHT")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in names:
            raise ConfigError(f"--prefer: unknown task '{key}'; tasks: {', '.join(names)}")
        try:
            out[key] = float(raw)
        except ValueError:
            raise ConfigError(f"--prefer: weight '{raw}' of '{key}' is not a number") from None
    if not out or any(w < 0 for w in out.values()) or not sum(out.values()) > 0:
        raise ConfigError("--prefer: give non-negative weights, not all zero (e.g. a=2,b=1)")
    return out


def preference_weights(prefer: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    """Weights in ``names`` order, L2-normalised (as MAP picks by preference)."""
    w = np.array([float(prefer.get(n, 0.0)) for n in names])
    return w / np.linalg.norm(w)


def prefer_index(values: Any, directions: Sequence[str], weights: Sequence[float]) -> int:
    """Row maximising the weighted sum of scores normalised to [0, 1] over the rows (1 = best).

    A column with a single value normalises to 1 everywhere (it cannot tell rows apart).
    """
    loss = _as_loss(values, directions)
    if len(loss) == 0:
        raise ValueError("prefer_index: no candidates")
    lo, hi = loss.min(axis=0), loss.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    goodness = (hi - loss) / span  # 1 at the best row, 0 at the worst
    return int(np.argmax(goodness @ np.asarray(weights, dtype=np.float64)))


# -- the per-trial tracker ------------------------------------------------------------------
def base_scores(evaluator: Any) -> dict[str, float]:
    """Run on a worker: every task's metric of the base model θ₀ (each task with its head)."""
    pool = evaluator.pool
    pool.live.copy_(pool.base)
    return {
        task: float(obj.evaluate(pool.model(evaluator.heads[task])))
        for task, obj in evaluator.objectives.items()
    }


class HypervolumeTracker:
    """Keeps a study's front in memory and gives the hypervolume after each new point.

    The driver writes the returned value as the trial's ``hypervolume`` user attr (one write per
    trial, no storage read); :meth:`start` reads the complete trials once.
    """

    def __init__(
        self, directions: Sequence[str], reference: Sequence[float] | None, source: str
    ) -> None:
        self.directions = list(directions)
        self.reference = None if reference is None else [float(r) for r in reference]
        self.source = source
        self._loss = np.zeros((0, len(self.directions)))
        self._worst: np.ndarray | None = None

    @classmethod
    def start(cls, setup: StudySetup, executor: Executor | None) -> HypervolumeTracker | None:
        """The tracker of a multi-objective study (``None`` for one objective).

        The reference point is read from the study, or made once: the base model's study
        values when ``executor`` can evaluate it, else the running worst scores.
        """
        from optuna.trial import TrialState

        if len(setup.directions) < 2:
            return None
        study = setup.study
        stored = study.user_attrs.get(PARETO_ATTR)
        if stored is None:
            stored = {"reference": None, "source": "worst"}
            if executor is not None:
                try:
                    metrics = executor.call(base_scores)
                    ref = [metrics[t] for t in setup.objectives]
                    if all(math.isfinite(r) for r in ref):
                        stored = {"reference": ref, "source": "base", "metrics": metrics}
                except Exception:  # no call support, or the base does not evaluate: fall back
                    pass
            study.set_user_attr(PARETO_ATTR, stored)
        tracker = cls(setup.directions, stored.get("reference"), stored.get("source", "worst"))
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for t in done:
            tracker._push(t.values)
        return tracker

    def _push(self, values: Sequence[float]) -> None:
        loss = _as_loss([values], self.directions)
        self._worst = loss[0] if self._worst is None else np.maximum(self._worst, loss[0])
        both = np.vstack([self._loss, loss])
        self._loss = both[_nondominated_loss(both)]

    def reference_loss(self) -> np.ndarray:
        if self.reference is not None:
            return _as_loss([self.reference], self.directions)[0]
        assert self._worst is not None
        return self._worst

    def add(self, values: Sequence[float]) -> float:
        """Add one complete trial's values; return the study's hypervolume including it."""
        self._push(values)
        ref = self.reference_loss()
        inside = self._loss[np.all(self._loss < ref, axis=1)]
        return _hv_loss(inside, ref)


def study_hypervolume(study: optuna.Study) -> tuple[float, list[float], str] | None:
    """The hypervolume of a stored multi-objective study's complete trials, its reference and
    the reference's source; ``None`` for single-objective or empty studies."""
    from optuna.trial import TrialState

    if len(study.directions) < 2:
        return None
    dirs = [d.name.lower() for d in study.directions]
    vals = [t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not vals:
        return None
    stored = study.user_attrs.get(PARETO_ATTR) or {}
    ref = stored.get("reference")
    source = stored.get("source", "worst")
    if ref is None:
        worst = _as_loss(vals, dirs).max(axis=0)
        ref = list(_as_loss([worst], dirs)[0])  # back to scores (the sign flip is its inverse)
        source = "worst"
    return hypervolume(vals, ref, dirs), [float(r) for r in ref], source
