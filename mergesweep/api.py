"""The Python API, mirroring the CLI (for notebooks and scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergesweep.config import apply_overrides, parse_config, read_yaml
from mergesweep.driver import SweepSummary, run_sweep
from mergesweep.storage import DEFAULT_STORAGE
from mergesweep.study import StudySetup, fork_study, open_study, reconcile, stored_config

__all__ = ["fork", "load_config_dict", "resume", "run", "sweep"]


def load_config_dict(
    config: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> dict[str, Any]:
    """A validated config dict (defaults filled in, ``${zoo:...}`` kept) from a YAML path or a
    mapping, with overrides applied: the form stored with the study."""
    if isinstance(config, dict):
        data, default = dict(config), "study"
    else:
        data, default = read_yaml(config), Path(config).stem
    data = apply_overrides(data, overrides or [])
    data.setdefault("name", default)
    return parse_config(data, default_name=default).to_dict()


def sweep(setup: StudySetup, *, progress: bool = False) -> SweepSummary:
    """Run an opened study to its budget: through Ray Tune for ``executor.kind: tune``
    (:func:`mergesweep.runtime.tune.run_tune_sweep`), else with the driver's loop."""
    if setup.cfg.executor.kind == "tune":
        from mergesweep.runtime.tune import run_tune_sweep

        return run_tune_sweep(setup, progress=progress)
    return run_sweep(setup, progress=progress)


def run(
    config: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    progress: bool = False,
) -> SweepSummary:
    """Run (or continue) the study a config describes until its budget of complete trials.

    Example:
        >>> summary = mergesweep.run("experiments/quickstart.yaml", ["budget.trials=5"])
        ... # doctest: +SKIP
    """
    setup = open_study(load_config_dict(config, overrides))
    return sweep(setup, progress=progress)


def resume(
    name: str,
    storage: str = DEFAULT_STORAGE,
    overrides: list[str] | None = None,
    *,
    progress: bool = False,
) -> SweepSummary:
    """Continue study ``name`` from the storage alone, after failing and re-queuing trials a
    dead driver left RUNNING. Only ``budget.*`` and ``executor.*`` may be overridden."""
    config = load_config_dict(apply_overrides(stored_config(name, storage), overrides or []))
    setup = open_study(config, create=False)
    reconcile(setup.study)
    return sweep(setup, progress=progress)


def fork(
    name: str,
    to: str,
    storage: str = DEFAULT_STORAGE,
    overrides: list[str] | None = None,
    *,
    progress: bool = False,
) -> SweepSummary:
    """Start study ``to`` from ``name``'s config and complete trials, then run it."""
    fork_study(name, storage, to, overrides or [])
    config = stored_config(to, storage)
    return sweep(open_study(config, create=False), progress=progress)
