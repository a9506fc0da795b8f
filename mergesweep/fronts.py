"""``mergesweep show`` for fronts: evaluated and predicted (MAP) fronts, hypervolume, and the
pick for a preference (``--prefer topic=2,langid=1``), optionally evaluated as a new trial."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from mergesweep.errors import StorageError
from mergesweep.pareto import (
    hypervolume,
    nondominated,
    parse_prefer,
    prefer_index,
    preference_weights,
    study_hypervolume,
)

__all__ = ["evaluate_pick", "evaluated_front", "pick", "render_fronts"]


def _tasks(study: optuna.Study) -> list[tuple[str, str, str]]:
    from mergesweep.search.map import task_info

    return task_info(study)


def evaluated_front(study: optuna.Study) -> list[dict[str, Any]]:
    """Complete trials non-dominated on the per-task metrics (whatever the study's mode)."""
    tasks = _tasks(study)
    names, dirs = [t for t, _, _ in tasks], [d for _, _, d in tasks]
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        m = t.user_attrs.get("metrics") or {f"value{i}": v for i, v in enumerate(t.values or [])}
        if all(k in m for k in names):
            rows.append({"number": t.number, "params": dict(t.params), "scores": m})
    if not rows:
        return []
    mask = nondominated([[r["scores"][k] for k in names] for r in rows], dirs)
    return [r for r, keep in zip(rows, mask) if keep]


def pick(study: optuna.Study, prefer: str) -> dict[str, Any]:
    """The point of the predicted front (MAP) or, without one, of the evaluated front that
    maximises the preference-weighted sum of normalised scores."""
    tasks = _tasks(study)
    names, dirs = [t for t, _, _ in tasks], [d for _, _, d in tasks]
    weights = parse_prefer(prefer, names)
    record = study.user_attrs.get("map")
    if record and record.get("front"):
        front, source = record["front"], "predicted"
        names, dirs = list(record["tasks"]), list(record["directions"])
        vals = [[f["predicted"][k] for k in names] for f in front]
    else:
        front = evaluated_front(study)
        if not front:
            raise StorageError(f"--prefer: study '{study.study_name}' has no complete trial yet")
        source = "evaluated"
        vals = [[f["scores"][k] for k in names] for f in front]
    i = prefer_index(vals, dirs, preference_weights(weights, names))
    chosen = front[i]
    return {
        "source": source,
        "weights": weights,
        "params": dict(chosen["params"]),
        "scores": dict(zip(names, vals[i])),
        "trial": chosen.get("number"),
    }


def evaluate_pick(study_name: str, storage: str, params: dict[str, float]) -> dict[str, Any]:
    """Evaluate ``params`` as a new trial of the stored study; its metrics and number."""
    from mergesweep.driver import evaluate_points
    from mergesweep.runtime import build_executor
    from mergesweep.study import open_study, stored_config

    setup = open_study(stored_config(study_name, storage), create=False)
    executor = build_executor(setup.config, setup.layout)
    try:
        trials = evaluate_points(setup, executor, [params], user_attrs={"picked": True})
    finally:
        executor.shutdown()
    if not trials:
        return {"trial": None, "metrics": {}}
    return {"trial": trials[0].number, "metrics": dict(trials[0].user_attrs["metrics"])}


def _thin(n: int, limit: int) -> list[int]:
    if n <= limit:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, limit)})


def render_fronts(study: optuna.Study, limit: int = 10) -> list[Any]:
    """Rich renderables: hypervolume line, evaluated front (single-objective studies: over the
    per-task metrics), and MAP's predicted front with its surrogates' R²."""
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = []
    names = [t for t, _, _ in _tasks(study)]
    hv = study_hypervolume(study)
    if hv is not None:
        value, ref, source = hv
        refs = ", ".join(f"{r:.4f}" for r in ref)
        out.append(Text(f"hypervolume {value:.6f} (reference: {source} scores [{refs}])"))
    record = study.user_attrs.get("map")
    if len(study.directions) == 1 and (record or len(names) > 1):
        front = evaluated_front(study)
        table = Table(title=f"{study.study_name}: evaluated front over task metrics")
        table.add_column("trial", justify="right")
        for n in names:
            table.add_column(n, justify="right")
        for r in front:
            table.add_row(str(r["number"]), *(f"{r['scores'][n]:.4f}" for n in names))
        out.append(table)
    if record and record.get("front"):
        pnames = list(record["front"][0]["params"])
        table = Table(
            title=f"{study.study_name}: MAP predicted front ({len(record['front'])} points, "
            f"{record.get('evaluations')} evaluations; showing ≤ {limit})"
        )
        for p in pnames:
            table.add_column(p, justify="right")
        for t in record["tasks"]:
            table.add_column(f"{t} (pred.)", justify="right")
        front = record["front"]
        for i in _thin(len(front), limit):
            f = front[i]
            table.add_row(
                *(f"{f['params'][p]:.3f}" for p in pnames),
                *(f"{f['predicted'][t]:.4f}" for t in record["tasks"]),
            )
        out.append(table)
        r2 = ", ".join(
            f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in record.get("r2", {}).items()
        )
        line = f"surrogate R² (held-out): {r2}"
        if hv is not None:
            pred = [[f["predicted"][t] for t in record["tasks"]] for f in front]
            if list(record["tasks"]) == names:
                phv = hypervolume(pred, hv[1], record["directions"])
                line += f"; predicted-front hypervolume {phv:.6f}"
        out.append(Text(line))
    return out
