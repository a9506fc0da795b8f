"""Studies in the storage: create, reopen with checks, reconcile after a crash, fork.

A study's user attr ``mergesweep`` holds everything needed to rebuild it from the storage
alone: the config as written (``${zoo:...}`` unresolved), the space hash, directions, metric
names, searcher settings and the pool fingerprint.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from mergesweep.config import ExperimentConfig, parse_config
from mergesweep.errors import ConfigError, MergesweepError, ResumeMismatchError, StorageError
from mergesweep.pool import PoolLayout, read_layout
from mergesweep.pruning import build_pruner, check_pruning, task_weights
from mergesweep.runtime.worker import pool_spec, resolved_config
from mergesweep.search import SearchContext, Searcher, build_searcher, distributions
from mergesweep.spaces import build_space
from mergesweep.spaces.base import Space
from mergesweep.storage import open_storage, require_study

__all__ = ["ATTR", "StudySetup", "fork_study", "open_study", "reconcile", "study_record"]

ATTR = "mergesweep"
# Keys that may differ when a study is continued: they change how, not what, is searched.
MUTABLE_KEYS = ("budget", "executor", "storage")
VERSION = 1


@dataclass
class StudySetup:
    """Everything the driver needs, built on the driver without loading any weights."""

    config: dict[str, Any]
    cfg: ExperimentConfig
    layout: PoolLayout
    space: Space
    searcher: Searcher
    objectives: dict[str, Any]
    directions: list[str]
    metric_names: list[str]
    study: optuna.Study
    storage_url: str


def _directions(cfg: ExperimentConfig, objectives: dict[str, Any]) -> tuple[list[str], list[str]]:
    dirs = {task: obj.direction for task, obj in objectives.items()}
    if cfg.objectives.mode == "pareto":
        return [dirs[t] for t in objectives], list(objectives)
    kinds = set(dirs.values())
    if len(kinds) > 1:
        raise ConfigError(
            f"objectives.mode: '{cfg.objectives.mode}' cannot combine maximised and minimised "
            f"metrics ({dirs}); use mode: pareto or metrics of one direction"
        )
    return [kinds.pop()], [cfg.objectives.mode]


def study_record(
    setup_cfg: dict[str, Any],
    space: Space,
    layout: PoolLayout,
    searcher: Searcher,
    directions: list[str],
    metric_names: list[str],
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "config": setup_cfg,
        "space_hash": space.hash(),
        "space_dim": space.dim,
        "pool_fingerprint": layout.fingerprint,
        "directions": directions,
        "metric_names": metric_names,
        "searcher": {"name": searcher.name, "options": searcher.options()},
        "experts": list(layout.experts),
    }


def _diff(old: Any, new: Any, key: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{key}.{k}" if key else str(k)
            if key == "" and k in MUTABLE_KEYS:
                continue
            if k not in old or k not in new:
                out.append(sub)
            else:
                out.extend(_diff(old[k], new[k], sub))
        return out
    return [] if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True) else [key]


def _stored_config(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The stored config with the defaults of keys added since it was stored (a study made
    before ``pruning.window`` existed ran with its default); as stored if it no longer parses."""
    # Studies made before ``pruning`` existed ran without it.
    stored = {"pruning": new["config"].get("pruning"), **old["config"]}
    try:
        return parse_config(stored).to_dict()
    except MergesweepError:
        return stored


def _check_match(name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    changed = _diff(_stored_config(old, new), new["config"])
    if changed:
        raise ResumeMismatchError(
            f"study '{name}': the config changed since the study was created "
            f"({', '.join(changed[:6])}); resume without changes, or use "
            f"'mergesweep fork {name} --to NEW' to search differently with the same evidence"
        )
    if old["pool_fingerprint"] != new["pool_fingerprint"]:
        raise ResumeMismatchError(
            f"study '{name}': pool.base/pool.experts: the weight files changed since the study "
            f"was created (fingerprint {old['pool_fingerprint']} → {new['pool_fingerprint']})"
        )
    if old["space_hash"] != new["space_hash"]:
        raise ResumeMismatchError(
            f"study '{name}': space: the space built from the same config differs "
            f"(hash {old['space_hash']} → {new['space_hash']}; pool tensors or mergesweep changed)"
        )


def _create(storage: optuna.storages.BaseStorage, name: str, directions: list[str]) -> bool:
    """Create the study; False when another driver created it first (a lost race)."""
    try:
        storage.create_new_study([StudyDirection[d.upper()] for d in directions], name)
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def _stored_record(
    storage: optuna.storages.BaseStorage, name: str, url: str, wait_s: float
) -> dict[str, Any]:
    """The study's mergesweep record; waits a little when its creator has not written it yet."""
    study_id = storage.get_study_id_from_name(name)
    deadline = time.monotonic() + wait_s
    while True:
        record = storage.get_study_user_attrs(study_id).get(ATTR)
        if record is not None:
            return record
        if time.monotonic() >= deadline:
            raise StorageError(f"study '{name}' in '{url}' was not made by mergesweep")
        time.sleep(0.2)


def open_study(
    config: dict[str, Any],
    *,
    create: bool = True,
    fresh_only: bool = False,
    prior: list[optuna.trial.FrozenTrial] | None = None,
) -> StudySetup:
    """Build the driver-side setup and create or reopen the study ``config['name']``.

    Reopening checks the stored record against this config: anything but the budget, executor
    and storage changing is refused with the keys that changed.
    """
    from mergesweep.objectives import build_objective

    config = parse_config(config).to_dict()  # defaults filled in: the stored, comparable form
    cfg = resolved_config(config)
    layout = read_layout(pool_spec(cfg))
    space = build_space(cfg.space.kind, layout, cfg.space.options)
    searcher = build_searcher(cfg.searcher.name, cfg.searcher.options)
    objectives = {t: build_objective(t, dict(s)) for t, s in cfg.objectives.tasks.items()}
    directions, metric_names = _directions(cfg, objectives)
    check_pruning(cfg, objectives, searcher)
    if len(directions) > 1 and not searcher.multi_objective:
        raise ConfigError(
            f"searcher.name: '{searcher.name}' handles one objective; objectives.mode 'pareto' "
            "needs a multi-objective searcher (nsga2, tpe, gp, random)"
        )
    record = study_record(config, space, layout, searcher, directions, metric_names)
    storage = open_storage(cfg.storage)
    exists = cfg.name in {s.study_name for s in storage.get_all_studies()}
    if exists and fresh_only:
        raise StorageError(f"study '{cfg.name}' already exists in '{cfg.storage}'")
    if not exists and not create:
        require_study(storage, cfg.name, cfg.storage)
    created = not exists and _create(storage, cfg.name, directions)
    lost_race = not exists and not created  # another driver created it just now
    if lost_race and fresh_only:
        raise StorageError(f"study '{cfg.name}' already exists in '{cfg.storage}'")
    exists = not created
    if exists:
        old = _stored_record(storage, cfg.name, cfg.storage, wait_s=30.0 if lost_race else 0.0)
        _check_match(cfg.name, old, record)
    if prior is None and exists:
        prior = [
            t
            for t in optuna.load_study(study_name=cfg.name, storage=storage).get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,)
            )
            if "forked_from" in t.user_attrs
        ]
    ctx = SearchContext(space, cfg.seed, directions, cfg.budget.trials, prior or [])
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.name,
        directions=directions,
        sampler=searcher.sampler(ctx),
        pruner=build_pruner(cfg.pruning, task_weights(cfg)),
        load_if_exists=True,
    )
    if created:
        study.set_user_attr(ATTR, record)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names)
        for i, entry in enumerate(cfg.searcher.enqueue):
            point = space.init_point() if entry == "init" else entry
            if not isinstance(point, dict):
                raise ConfigError(f"searcher.enqueue[{i}]: expected 'init' or a mapping of params")
            study.enqueue_trial(space.check(point), user_attrs={"enqueued": True})
    return StudySetup(
        config,
        cfg,
        layout,
        space,
        searcher,
        objectives,
        directions,
        metric_names,
        study,
        cfg.storage,
    )


def stored_config(name: str, url: str) -> dict[str, Any]:
    """The config a study was created with, read from the storage alone."""
    storage = open_storage(url)
    require_study(storage, name, url)
    record = optuna.load_study(study_name=name, storage=storage).user_attrs.get(ATTR)
    if record is None:
        raise StorageError(f"study '{name}' in '{url}' was not made by mergesweep")
    config = copy.deepcopy(record["config"])
    config["storage"] = url
    return config


def reconcile(study: optuna.Study) -> list[int]:
    """Fail trials a dead driver left RUNNING and re-queue each one's point once.

    The re-queue mark is written before the new trial is enqueued, so a crash in between can
    lose a re-queue but never duplicate one.
    """
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # A driver killed while asking leaves no params yet (one batched commit): an enqueued
        # point is still known from its fixed params; a sampled one is simply asked anew.
        point = t.params or t.system_attrs.get("fixed_params") or {}
        requeue = "requeue_of" not in t.user_attrs and point
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "driver died mid-trial")
        if requeue:
            study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
            study.enqueue_trial(point, user_attrs={"requeue_of": t.number})
        study.tell(t.number, state=TrialState.FAIL)
        failed.append(t.number)
    return failed


def fork_study(name: str, url: str, to: str, overrides: list[str]) -> dict[str, Any]:
    """Create study ``to`` from ``name``'s config plus overrides, seeded with its complete trials.

    The pool and space must stay the same (the trials' points must mean the same merge); the
    searcher, objectives' aggregation, budget and executor may change. Values are recomputed
    from the stored per-task metrics under the new aggregation.
    """
    from mergesweep.config import apply_overrides
    from mergesweep.driver import study_values

    old = stored_config(name, url)  # read the storage once
    config = apply_overrides(old, overrides)
    config["name"] = to
    parse_config(config)
    old_trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,)
    )
    setup = open_study(config, fresh_only=True, prior=[])
    old_space = build_space(
        old["space"].get("kind", "modelwise"),
        setup.layout,
        old["space"].get("options", {}),
    )
    if old_space.hash() != setup.space.hash():
        raise ConfigError("space: fork keeps the space; start a new study to change it")
    dists = distributions(setup.space)
    copied = []
    for t in old_trials:
        metrics = t.user_attrs.get("metrics")
        if not metrics:
            continue
        attrs = {k: v for k, v in t.user_attrs.items() if k not in ("enqueued", "requeue_of")}
        attrs["forked_from"] = f"{name}#{t.number}"
        copied.append(
            optuna.trial.create_trial(
                params=t.params,
                distributions=dists,
                values=study_values(setup, metrics, t.params),
                user_attrs=attrs,
            )
        )
    setup.study.add_trials(copied)
    return {"name": to, "copied": len(copied)}
