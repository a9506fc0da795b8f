"""Readable results: best trials or the Pareto front, and the studies in a storage."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from mergesweep.storage import open_storage

__all__ = ["best_trials", "list_studies", "render_best", "trial_row"]


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One complete trial as a flat record: number, values, per-task metrics, timings."""
    timings = t.user_attrs.get("timings", {})
    return {
        "number": t.number,
        "values": list(t.values or []),
        "metrics": dict(t.user_attrs.get("metrics", {})),
        "merge_s": timings.get("merge_s"),
        "eval_s": timings.get("eval_s"),
        "forward_s": timings.get("forward_s"),  # objectives that time their forward passes
        "params": dict(t.params),
        "forked_from": t.user_attrs.get("forked_from"),
    }


def best_trials(study: optuna.Study, limit: int = 10) -> list[dict[str, Any]]:
    """The best ``limit`` trials (one objective) or the whole Pareto front (several)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number)
        return [trial_row(t) for t in front]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    ranked = sorted(complete, key=lambda t: (sign * t.values[0], t.number))
    return [trial_row(t) for t in ranked[:limit]]


def render_best(study: optuna.Study, limit: int = 10, title: str | None = None):
    """A rich table of :func:`best_trials` with one column per task metric."""
    from rich.table import Table

    rows = best_trials(study, limit)
    multi = len(study.directions) > 1
    names = study.metric_names or [f"value{i}" for i in range(len(study.directions))]
    table = Table(title=title or (f"{study.study_name}: " + ("Pareto front" if multi else "best")))
    table.add_column("trial", justify="right")
    for n in names:
        table.add_column(n, justify="right")
    tasks = list(dict.fromkeys(k for r in rows for k in r["metrics"]))  # config order
    if not multi:
        for task in tasks:
            table.add_column(task, justify="right")
    table.add_column("merge s", justify="right")
    table.add_column("eval s", justify="right")
    forward = any(r["forward_s"] is not None for r in rows)
    if forward:
        table.add_column("forward s", justify="right")
    for r in rows:
        cells = [str(r["number"]) + (" *" if r["forked_from"] else "")]
        cells += [f"{v:.4f}" for v in r["values"]]
        if not multi:
            cells += [f"{r['metrics'].get(t, float('nan')):.4f}" for t in tasks]
        cells += [
            "-" if r["merge_s"] is None else f"{r['merge_s']:.3f}",
            "-" if r["eval_s"] is None else f"{r['eval_s']:.3f}",
        ]
        if forward:
            cells.append("-" if r["forward_s"] is None else f"{r['forward_s']:.3f}")
        table.add_row(*cells)
    return table


def list_studies(url: str) -> list[dict[str, Any]]:
    """Every study in the storage with its trial counts, directions and best value."""
    storage = open_storage(url)
    out = []
    for s in storage.get_all_studies():
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best: Any = None
        if complete:
            best = (
                round(study.best_value, 6) if len(study.directions) == 1 else len(study.best_trials)
            )
        out.append(
            {
                "name": s.study_name,
                "complete": len(complete),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "running": sum(t.state == TrialState.RUNNING for t in trials),
                "directions": [d.name.lower() for d in study.directions],
                "best": best,
                "budget": (
                    study.user_attrs.get("mergesweep", {})
                    .get("config", {})
                    .get("budget", {})
                    .get("trials")
                ),
            }
        )
    return out
