"""Experiment configs for runtime tests (digits zoo, Ray executor by default)."""

from __future__ import annotations

from pathlib import Path

import optuna

from mergesweep.storage import open_storage

TASKS = ("low", "high", "parity", "loop")


def runtime_config(zoo: Path, storage: str, **changes) -> dict:
    """A small digits experiment (100 validation examples per task, model-wise λ, random)."""
    cfg = {
        "name": "rt",
        "seed": 0,
        "storage": storage,
        "pool": {
            "base": str(zoo / "base"),
            "experts": {t: str(zoo / "experts" / t) for t in TASKS},
            "include": [r"vit\..*"],
        },
        "space": {"kind": "modelwise"},
        "objectives": {
            "tasks": {
                t: {"kind": "accuracy", "data": str(zoo / "data" / t), "samples": 100}
                for t in TASKS
            }
        },
        "searcher": {"name": "random", "enqueue": ["init"]},
        "budget": {"trials": 4},
        "executor": {"kind": "ray", "workers": 2, "threads": 1},
    }
    for key, value in changes.items():
        node = cfg
        *head, last = key.split("__")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def with_callable(cfg: dict, function: str, task: str = "low") -> dict:
    """Score ``task`` by ``tests/runtime/ms_runtime_fns.py:function`` instead of accuracy."""
    cfg["objectives"]["tasks"][task] = {
        "kind": "callable",
        "function": f"ms_runtime_fns:{function}",
    }
    return cfg


def stored_trials(cfg: dict) -> list[optuna.trial.FrozenTrial]:
    """Every trial of ``cfg``'s study, read back from its storage."""
    study = optuna.load_study(study_name=cfg["name"], storage=open_storage(cfg["storage"]))
    return study.get_trials(deepcopy=False)
