"""Fixtures for engine tests: small, fast experiment configs over the digits zoo."""

from __future__ import annotations

import pytest

TASKS = ("low", "high", "parity", "loop")


def digits_config(zoo, tmp_path, **changes) -> dict:
    """A small, fast experiment over the digits zoo (validation subsets of 100 examples)."""
    cfg = {
        "name": "t",
        "seed": 0,
        "storage": f"sqlite:///{tmp_path / 'studies.db'}",
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
        "executor": {"kind": "inline"},
    }
    for key, value in changes.items():
        node = cfg
        *head, last = key.split("__")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


@pytest.fixture
def make_config(digits_zoo, tmp_path):
    """``make_config(**changes)``: a digits experiment; ``a__b=v`` sets ``cfg['a']['b'] = v``."""

    def make(zoo=None, **changes) -> dict:
        return digits_config(zoo or digits_zoo, tmp_path, **changes)

    return make
