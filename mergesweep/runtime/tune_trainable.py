"""The merge-and-evaluate step as a Ray Tune function trainable, for Tune sweeps of your own.

:func:`merge_trainable` merges a study's pool at the point its Tune ``config`` gives, scores
every task and reports the study values (under the study's metric names, e.g. ``mean``, or one
per task for ``objectives.mode: pareto``), the per-task metrics (``metrics/<task>``) and the
timings (``timings/merge_s`` …). :func:`make_trainable` binds it to an experiment and to the
resources of ``executor.threads``/``executor.num_gpus``; :func:`search_space` gives the
matching Tune ``param_space`` and :func:`tune_objective` the ``metric``/``mode`` pair.

The loaded pool is cached per worker process: a Tune actor that serves several trials (Tune's
``reuse_actors=True``) loads the pool once; without actor reuse every trial starts a fresh actor
and loads the pool again (``cold_start`` in the result says which happened).

Example:
    >>> from ray import tune
    >>> from mergesweep.runtime.tune import make_trainable, search_space, tune_objective
    >>> cfg = "experiments/quickstart.yaml"
    >>> metric, mode = tune_objective(cfg)
    >>> tuner = tune.Tuner(
    ...     make_trainable(cfg),
    ...     param_space=search_space(cfg),
    ...     tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=8,
    ...                                 reuse_actors=True),
    ... )  # doctest: +SKIP
    >>> best = tuner.fit().get_best_result()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesweep.errors import ConfigError, MergesweepError

__all__ = [
    "ERROR_KEY",
    "TrialError",
    "evaluate_point",
    "make_trainable",
    "merge_trainable",
    "search_space",
    "tune_objective",
]

# In ``on_failure="report"`` mode a failed trial reports its reason under this key (and NaN
# values), so the sweep's searcher can record it; ``"raise"`` mode raises :class:`TrialError`.
ERROR_KEY = "mergesweep_error"


class TrialError(MergesweepError, RuntimeError):
    """A trial's merge or evaluation failed (an objective raised or gave a non-finite value)."""


@dataclass
class _Resident:
    """What one worker process keeps between trials: the evaluator, space and searcher."""

    key: str
    evaluator: Any
    space: Any
    searcher: Any
    metric_names: list[str]


_RESIDENT: _Resident | None = None


def _config_dict(config: str | Path | dict[str, Any], overrides: list[str] | None) -> dict:
    from mergesweep.api import load_config_dict

    return load_config_dict(config, overrides)


def _key(experiment: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(experiment, sort_keys=True, default=str).encode()).hexdigest()


def _metric_names(cfg: Any) -> list[str]:
    if cfg.objectives.mode == "pareto":
        return list(cfg.objectives.tasks)
    return [cfg.objectives.mode]


def _resident(experiment: dict[str, Any]) -> tuple[_Resident, bool]:
    """This process's resident pool for ``experiment`` (loaded on first use); True if loaded now."""
    global _RESIDENT
    key = _key(experiment)
    if _RESIDENT is not None and _RESIDENT.key == key:
        return _RESIDENT, False
    from mergesweep.runtime.ray_worker import _quiet_worker
    from mergesweep.runtime.worker import Evaluator
    from mergesweep.search import build_searcher
    from mergesweep.spaces import build_space

    _quiet_worker()
    _RESIDENT = None  # free the previous pool before loading another
    evaluator = Evaluator(experiment)
    cfg = evaluator.cfg
    space = build_space(cfg.space.kind, evaluator.pool.layout, cfg.space.options)
    searcher = build_searcher(cfg.searcher.name, cfg.searcher.options)
    _RESIDENT = _Resident(key, evaluator, space, searcher, _metric_names(cfg))
    return _RESIDENT, True


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune's nested config (``a/b`` names are split on ``/``) back to flat parameter names."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{name}/"))
        else:
            out[name] = v
    return out


def _worker_name() -> str:
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # not inside Ray
        node = "local"
    return f"{socket.gethostname()}:{os.getpid()}@{node}"


def evaluate_point(config: dict[str, Any], experiment: dict[str, Any]) -> dict[str, Any]:
    """Merge ``experiment``'s pool at the point in ``config`` and score it, in this process.

    ``config`` holds the space's parameters by name (keys that are not parameters, e.g. a
    user's own Tune settings, are ignored); a missing or out-of-bounds parameter raises
    :class:`~mergesweep.errors.SpaceError`. Returns ``{"values": [...], "metric_names": [...],
    "metrics": {...}, "timings": {...}, "worker": str, "cold_start": bool, "error": str|None}``.
    """
    from mergesweep.driver import study_values
    from mergesweep.runtime.base import Job

    res, cold = _resident(experiment)
    flat = _flat(config)
    point = res.space.check({n: flat[n] for n in res.space.names() if n in flat})
    result = res.evaluator.evaluate(Job(0, res.space.to_plan(point)))
    timings = {**result.timings, "load_s": res.evaluator.load_s}
    out: dict[str, Any] = {
        "values": [],
        "metric_names": list(res.metric_names),
        "metrics": dict(result.metrics),
        "timings": timings,
        "worker": _worker_name(),
        "cold_start": cold,
        "error": result.error,
    }
    if result.ok:
        # study_values reads only cfg, objectives (their directions) and searcher.
        view = types.SimpleNamespace(
            cfg=res.evaluator.cfg, objectives=res.evaluator.objectives, searcher=res.searcher
        )
        out["values"] = study_values(view, result.metrics, point)  # type: ignore[arg-type]
    return out


def merge_trainable(
    config: dict[str, Any], experiment: dict[str, Any], on_failure: str = "raise"
) -> None:
    """Ray Tune function trainable: merge at ``config``'s point, evaluate, report once.

    Reports the study values under the study's metric names, ``metrics/<task>``,
    ``timings/{merge_s,eval_s,load_s}``, ``worker`` and ``cold_start``. A failed trial raises
    :class:`TrialError` (``on_failure="raise"``, Tune marks the trial ERROR) or reports its
    reason under :data:`ERROR_KEY` with NaN values (``"report"``, what ``executor: tune`` uses).
    Bind ``experiment`` with :func:`make_trainable` (or ``tune.with_parameters``).
    """
    from ray import tune

    try:
        out = evaluate_point(config, experiment)
        error = out["error"]
    except Exception as exc:  # the pool does not load, a bad point: the trial fails
        if on_failure == "raise":
            raise
        out, error = {"metric_names": [], "metrics": {}, "timings": {}}, _line(exc)
    if error is not None and on_failure == "raise":
        raise TrialError(f"trial at {_flat(config)} failed: {error}")
    report: dict[str, Any] = {
        "metrics": out["metrics"],
        "timings": out["timings"],
        "worker": out.get("worker", _worker_name()),
        "cold_start": out.get("cold_start", True),
    }
    names = out["metric_names"] or _metric_names_of(experiment)
    values = out.get("values") or [float("nan")] * len(names)
    report.update(zip(names, values))
    if error is not None:
        report[ERROR_KEY] = error
    tune.report(report)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _metric_names_of(experiment: dict[str, Any]) -> list[str]:
    from mergesweep.config import parse_config

    return _metric_names(parse_config(experiment))


def make_trainable(
    config: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    on_failure: str = "raise",
) -> Any:
    """:func:`merge_trainable` bound to an experiment (a YAML path or a config mapping, with
    ``key=value`` overrides) and to its ``executor.threads`` CPUs and ``executor.num_gpus``.

    The experiment travels as its config (paths, never tensors); each Tune worker loads the
    pool from the paths on its own node.
    """
    from ray import tune

    if on_failure not in ("raise", "report"):
        raise ValueError(f"on_failure: expected 'raise' or 'report', got {on_failure!r}")
    experiment = _config_dict(config, overrides)
    ex = experiment["executor"]
    bound = tune.with_parameters(merge_trainable, experiment=experiment, on_failure=on_failure)
    resources = {"cpu": float(ex["threads"]), "gpu": float(ex["num_gpus"])}
    return tune.with_resources(bound, resources)


def search_space(
    config: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> dict[str, Any]:
    """The experiment's space as a Tune ``param_space`` (``tune.uniform``/``loguniform``/
    ``quniform`` per parameter, same names and bounds); reads file headers only."""
    from ray import tune

    from mergesweep.pool import read_layout
    from mergesweep.runtime.worker import pool_spec, resolved_config
    from mergesweep.spaces import build_space

    cfg = resolved_config(_config_dict(config, overrides))
    space = build_space(cfg.space.kind, read_layout(pool_spec(cfg)), cfg.space.options)
    out: dict[str, Any] = {}
    for p in space.params:
        if p.log:
            out[p.name] = tune.loguniform(p.low, p.high)
        elif p.step:
            out[p.name] = tune.quniform(p.low, p.high, p.step)
        else:
            out[p.name] = tune.uniform(p.low, p.high)
    return out


def tune_objective(
    config: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> tuple[str | list[str], str | list[str]]:
    """``(metric, mode)`` for ``tune.TuneConfig``: the study's metric name and ``"max"``/``"min"``
    (lists of them for ``objectives.mode: pareto``, for a multi-objective searcher)."""
    from mergesweep.objectives import build_objective
    from mergesweep.runtime.worker import resolved_config

    cfg = resolved_config(_config_dict(config, overrides))
    dirs = {t: build_objective(t, dict(s)).direction for t, s in cfg.objectives.tasks.items()}
    modes = {t: "max" if d == "maximize" else "min" for t, d in dirs.items()}
    if cfg.objectives.mode == "pareto":
        return list(modes), [modes[t] for t in modes]
    if len(set(modes.values())) > 1:
        raise ConfigError(
            f"objectives.mode: '{cfg.objectives.mode}' cannot combine maximised and minimised "
            f"metrics ({dirs}); use mode: pareto or metrics of one direction"
        )
    return cfg.objectives.mode, next(iter(modes.values()), "max")
