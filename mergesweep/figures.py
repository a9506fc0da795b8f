"""Figures mergesweep adds to each study: progress, hypervolume, coefficients, per-task scores.

Every figure is a plain plotly figure dict (``{"data": [...], "layout": {...}}``) built from the
storage alone, plus the space and pool layout for the coefficient heatmap, so the same figures go
to the dashboard (:func:`mergesweep.dashboard.publish_figures`, through
``optuna_dashboard.save_plotly_graph_object`` under the ids ``mergesweep-<key>``) and to files
(:mod:`mergesweep.figures_file`).

Keys, in display order (a figure that does not apply to a study is left out):

* ``front`` — evaluated points of the first two objectives (per-task metrics), the observed
  Pareto front and, for MAP, the predicted front stored in the study attr ``map``. Published to
  the dashboard only when a predicted front exists (the dashboard draws its own Pareto front).
* ``hypervolume`` — hypervolume of the complete trials up to each trial number (several
  objectives), measured as :mod:`mergesweep.pareto` defines it (reference point included).
* ``best`` — best value so far of each objective over trial numbers.
* ``coefficients`` — experts × blocks (or the space's groups) heatmap of the best trial's plan
  (one objective: the best value; several: the balanced pick on the front, equal weights).
* ``tasks`` — per-task scores of the Pareto trials (several objectives) or of the best ten.

Step curves keep only the trials where the value changes (plus the last), so the figures stay
a few kilobytes on studies of thousands of trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mergesweep.pareto import PARETO_ATTR, HypervolumeTracker, nondominated, prefer_index

if TYPE_CHECKING:
    from mergesweep.pool import PoolLayout
    from mergesweep.spaces.base import Space

__all__ = [
    "FIGURE_KEYS",
    "ID_PREFIX",
    "best_trial",
    "block_coefficients",
    "study_figures",
    "study_space",
]

FIGURE_KEYS = ("front", "hypervolume", "best", "coefficients", "tasks")
ID_PREFIX = "mergesweep-"
MAP_ATTR = "map"  # the study attr MAP stores its predicted front in (mergesweep.search.map)
MAX_BARS = 40  # trials in the per-task bar chart
MAX_COLUMNS = 64  # heatmap columns before grouped spaces fall back to layer blocks
_TEMPLATE = {  # small and explicit: plotly's default template adds ~6 kB to every figure
    "layout": {
        "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"],
        "plot_bgcolor": "#f5f6f8",
        "paper_bgcolor": "#ffffff",
        "font": {"size": 12},
        "margin": {"l": 60, "r": 20, "t": 70, "b": 50},
    }
}
_LINE = "lines+markers"
_STEP = {"shape": "hv"}


# -- study data -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _View:
    """One read of a study (each property of an RDB study is a query): complete trials by
    number, objective names and directions, study user attrs."""

    trials: list[FrozenTrial]
    names: list[str]
    directions: list[str]
    attrs: dict[str, Any]

    @classmethod
    def of(cls, study: optuna.Study) -> _View:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        dirs = [d.name.lower() for d in study.directions]
        names = study.metric_names or [f"value{i}" for i in range(len(dirs))]
        return cls(sorted(trials, key=lambda t: t.number), list(names), dirs, study.user_attrs)

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    @cached_property
    def front(self) -> list[FrozenTrial]:
        """The non-dominated trials, by number (computed once: O(n²) in the trials)."""
        mask = nondominated([t.values for t in self.trials], self.directions)
        return [t for t, keep in zip(self.trials, mask) if keep]

    def tasks(self, trials: Sequence[FrozenTrial]) -> list[str]:
        """Task names in the config's order (the stored record), else as metrics list them."""
        config = self.attrs.get("mergesweep", {}).get("config", {})
        tasks = list(config.get("objectives", {}).get("tasks", {}))
        if tasks:
            return tasks
        seen: dict[str, None] = {}
        for t in trials:
            seen.update(dict.fromkeys(t.user_attrs.get("metrics", {})))
        return list(seen)

    def metric(self, t: FrozenTrial, task: str) -> float | None:
        """A trial's metric of ``task``, else its value of the objective named ``task``."""
        value = t.user_attrs.get("metrics", {}).get(task)
        if value is None and task in self.names:
            value = t.values[self.names.index(task)]
        return None if value is None else float(value)


def _layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "xaxis": {"title": {"text": x}},
        "yaxis": {"title": {"text": y}},
        "template": _TEMPLATE,
        **extra,
    }


def _trace(kind: str, name: str, x: Any, y: Any, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "name": name, "x": list(x), "y": list(y), **extra}


def _steps(numbers: Sequence[int], values: Sequence[float]) -> tuple[list[int], list[float]]:
    """The points of a step curve where the value changes, plus the last one."""
    xs: list[int] = []
    ys: list[float] = []
    for i, (n, v) in enumerate(zip(numbers, values)):
        if not ys or v != ys[-1] or i == len(values) - 1:
            xs.append(int(n))
            ys.append(float(v))
    return xs, ys


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial whose plan the heatmap shows: the best value (one objective), or the front's
    balanced pick (several: equal weights on scores normalised over the front)."""
    return _best(_View.of(study))


def _best(v: _View) -> FrozenTrial | None:
    trials, dirs = v.trials, v.directions
    if not trials:
        return None
    if len(dirs) == 1:
        sign = -1.0 if dirs[0] == "maximize" else 1.0
        return trials[int(np.argmin([sign * t.values[0] for t in trials]))]
    front = v.front
    weights = np.full(len(dirs), 1.0 / math.sqrt(len(dirs)))
    return front[prefer_index([t.values for t in front], dirs, weights)]


# -- figures ----------------------------------------------------------------------------------
def _best_figure(v: _View) -> dict[str, Any] | None:
    """Best-so-far of each objective over trial numbers (a step line per objective)."""
    trials = v.trials
    if not trials:
        return None
    numbers = [t.number for t in trials]
    data = []
    for i, (name, d) in enumerate(zip(v.names, v.directions)):
        col = np.array([t.values[i] for t in trials])
        best = np.maximum.accumulate(col) if d == "maximize" else np.minimum.accumulate(col)
        xs, ys = _steps(numbers, best.tolist())
        data.append(_trace("scatter", f"{name} ({d})", xs, ys, mode=_LINE, line=_STEP))
    return {"data": data, "layout": _layout("Best so far", "trial", "best value")}


def _hypervolume_figure(v: _View) -> dict[str, Any] | None:
    """Hypervolume of the complete trials up to each trial number (several objectives), with
    the reference :func:`mergesweep.pareto.study_hypervolume` uses: the stored one (the base
    model's scores), else the worst score per objective over the complete trials."""
    if not v.multi or not v.trials:
        return None
    stored = v.attrs.get(PARETO_ATTR) or {}
    reference, source = stored.get("reference"), stored.get("source", "worst")
    if reference is None:
        values = np.array([t.values for t in v.trials])
        worst = [
            values[:, i].min() if d == "maximize" else values[:, i].max()
            for i, d in enumerate(v.directions)
        ]
        reference, source = [float(w) for w in worst], "worst"
    tracker = HypervolumeTracker(v.directions, reference, source)
    hv = [tracker.add(t.values) for t in v.trials]
    xs, ys = _steps([t.number for t in v.trials], hv)
    ref = ", ".join(f"{n}={r:.4g}" for n, r in zip(v.names, reference))
    title = f"Hypervolume (reference: {source}; {ref})"
    data = [_trace("scatter", "hypervolume", xs, ys, mode=_LINE, line=_STEP)]
    return {"data": data, "layout": _layout(title, "trial", "hypervolume")}


def block_coefficients(
    space: Space, layout: PoolLayout, params: dict[str, float]
) -> tuple[list[str], np.ndarray]:
    """Columns and an ``(experts, columns)`` array: the plan of ``params`` averaged over each
    column's tensors, weighted by their sizes.

    Columns are the space's own groups (layer-wise blocks, group-wise groups) when it has at
    most :data:`MAX_COLUMNS`, else the layer blocks (``embed``, ``layer<i>``, ``other``,
    ``final``) parsed with the space's ``layer_regex``; ``all`` when no layer index is found.
    """
    from mergesweep.errors import MergesweepError
    from mergesweep.spaces.layers import DEFAULT_LAYER_REGEX, index_labels, parse_layers

    plan = space.to_plan(params)
    groups = getattr(space, "groups", None)
    if groups is not None and len(groups) <= MAX_COLUMNS:
        columns, index = list(groups), np.asarray(space.group_index)
    else:
        try:
            labels = parse_layers(
                layout.names, getattr(space, "layer_regex", None) or DEFAULT_LAYER_REGEX
            ).blocks
        except MergesweepError:
            labels = ("all",) * layout.num_tensors
        columns, index = index_labels(labels)
    sizes = np.diff(np.asarray(layout.offsets, dtype=np.float64))
    out = np.zeros((plan.num_experts, len(columns)))
    for c in range(len(columns)):
        rows = index == c
        w = sizes[rows] / sizes[rows].sum()
        out[:, c] = w @ plan.coefficients[rows]
    return columns, out


def _coefficients_figure(
    v: _View, space: Space | None, layout: PoolLayout | None
) -> dict[str, Any] | None:
    """Experts × blocks heatmap of the best trial's merge coefficients."""
    best = _best(v)
    if best is None or space is None or layout is None:
        return None
    columns, z = block_coefficients(space, layout, best.params)
    how = "balanced pick on the front" if v.multi else "best"
    data = [
        {
            "type": "heatmap",
            "z": np.round(z, 4).tolist(),
            "x": columns,
            "y": list(layout.experts),
            "colorscale": "Viridis",
            "texttemplate": "%{z:.2f}",
            "colorbar": {"title": {"text": "λ"}},
        }
    ]
    title = f"Coefficients of trial {best.number} ({how})"
    layout = _layout(title, "block", "expert")
    layout["yaxis"]["autorange"] = "reversed"  # experts top-down in the config's order
    return {"data": data, "layout": layout}


def _rows(v: _View) -> list[FrozenTrial]:
    """The Pareto trials (several objectives) or the ten best (one), at most MAX_BARS."""
    trials, dirs = v.trials, v.directions
    if v.multi:
        return v.front[:MAX_BARS]
    sign = -1.0 if dirs[0] == "maximize" else 1.0
    return sorted(trials, key=lambda t: (sign * t.values[0], t.number))[:10]


def _tasks_figure(v: _View) -> dict[str, Any] | None:
    """Grouped bars: each task's metric for the Pareto trials (or the best ten)."""
    rows = [t for t in _rows(v) if t.user_attrs.get("metrics")] if v.trials else []
    if not rows:
        return None
    labels = [f"#{t.number}" for t in rows]
    data = [
        {
            "type": "bar",
            "name": task,
            "x": labels,
            "y": [t.user_attrs["metrics"].get(task) for t in rows],
        }
        for task in v.tasks(rows)
    ]
    what = "Pareto trials" if v.multi else "best trials"
    layout = _layout(f"Per-task scores of the {what}", "trial", "metric", barmode="group")
    layout["xaxis"]["type"] = "category"  # plotly would read "#12" as the number 12
    return {"data": data, "layout": layout}


def _front_figure(v: _View) -> dict[str, Any] | None:
    """Evaluated points on two tasks, their observed front, and MAP's predicted front."""
    record = v.attrs.get(MAP_ATTR) or {}
    if record.get("tasks") and record.get("front"):
        tasks, dirs = list(record["tasks"]), list(record["directions"])
    elif v.multi:
        tasks, dirs = v.names, v.directions
    else:
        return None
    if len(tasks) < 2 or not v.trials:
        return None
    (tx, ty), (dx, dy) = tasks[:2], dirs[:2]
    pts = [(t.number, v.metric(t, tx), v.metric(t, ty)) for t in v.trials]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return None
    xy = np.array([[x, y] for _, x, y in pts])
    if [tx, ty] == v.names and [dx, dy] == v.directions and len(pts) == len(v.trials):
        on_front = {t.number for t in v.front}  # the study's own two objectives
        mask = [n in on_front for n, _, _ in pts]
    else:
        mask = nondominated(xy, [dx, dy]).tolist()
    front = sorted((p for p, keep in zip(pts, mask) if keep), key=lambda p: p[1])
    data = [
        _trace(
            "scatter",
            "evaluated",
            xy[:, 0].tolist(),
            xy[:, 1].tolist(),
            mode="markers",
            text=[f"trial {n}" for n, _, _ in pts],
            marker={"color": "#9aa5b1", "size": 6},
        ),
        _trace(
            "scatter",
            "Pareto front (evaluated)",
            (p[1] for p in front),
            (p[2] for p in front),
            mode=_LINE,
            text=[f"trial {p[0]}" for p in front],
            marker={"color": "#1f77b4", "size": 9},
        ),
    ]
    title = f"Pareto front: {tx} vs {ty}"
    if record.get("front"):
        pred = sorted((f["predicted"][tx], f["predicted"][ty]) for f in record["front"])
        data.append(
            _trace(
                "scatter",
                "MAP predicted front",
                (p[0] for p in pred),
                (p[1] for p in pred),
                mode="markers",
                marker={"color": "#ff7f0e", "symbol": "x", "size": 7},
            )
        )
        title += f" (MAP prediction from {record.get('evaluations', '?')} evaluations)"
    return {"data": data, "layout": _layout(title, f"{tx} ({dx})", f"{ty} ({dy})")}


def study_figures(
    study: optuna.Study, *, space: Space | None = None, layout: PoolLayout | None = None
) -> dict[str, dict[str, Any]]:
    """Every figure that applies to ``study``, by key in :data:`FIGURE_KEYS` order.

    Args:
        study: the study (any storage).
        space: the study's space, for the coefficient heatmap (left out without it).
        layout: the pool layout the space was built on.
    """
    v = _View.of(study)
    made = {
        "front": _front_figure(v),
        "hypervolume": _hypervolume_figure(v),
        "best": _best_figure(v),
        "coefficients": _coefficients_figure(v, space, layout),
        "tasks": _tasks_figure(v),
    }
    return {k: v for k, v in made.items() if v is not None}


def study_space(study: optuna.Study) -> tuple[Space | None, PoolLayout | None, str | None]:
    """The study's space and pool layout rebuilt from its stored config (weights' metadata
    only, zoos not built); ``(None, None, reason)`` when the pool files are unavailable."""
    from mergesweep.config import parse_config, resolve_strings
    from mergesweep.errors import MergesweepError
    from mergesweep.pool import read_layout
    from mergesweep.runtime.worker import pool_spec
    from mergesweep.spaces import build_space

    config = study.user_attrs.get("mergesweep", {}).get("config")
    if config is None:
        return None, None, "the study was not made by mergesweep"
    try:
        cfg = parse_config(resolve_strings(config, build_zoo=False))
        layout = read_layout(pool_spec(cfg))
        return build_space(cfg.space.kind, layout, cfg.space.options), layout, None
    except MergesweepError as exc:
        return None, None, str(exc)
