"""Executors: where trials run. One module each, one registry line each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mergesweep.pool import PoolLayout
from mergesweep.registry import Registry
from mergesweep.runtime.base import Executor, Job, JobResult

__all__ = ["EXECUTORS", "Executor", "Job", "JobResult", "build_executor"]

ExecutorFactory = Callable[[dict[str, Any], PoolLayout], Executor]
EXECUTORS: Registry[ExecutorFactory] = Registry("executor", key="executor.kind")


def _inline(config: dict[str, Any], layout: PoolLayout) -> Executor:
    from mergesweep.runtime.inline import InlineExecutor

    return InlineExecutor(config, layout)


EXECUTORS.register("inline")(_inline)


def _ray(config: dict[str, Any], layout: PoolLayout) -> Executor:
    from mergesweep.runtime.ray_executor import RayExecutor

    return RayExecutor(config, layout)


EXECUTORS.register("ray")(_ray)


def _tune(config: dict[str, Any], layout: PoolLayout) -> Executor:
    """``executor: tune``: sweeps run through Ray Tune (:func:`mergesweep.api.sweep` hands them
    to :func:`mergesweep.runtime.tune.run_tune_sweep`); work on single points outside a sweep
    (``mergesweep show --evaluate``) runs on the resident Ray workers of ``executor: ray``."""
    from mergesweep.runtime.ray_executor import RayExecutor

    return RayExecutor(config, layout)


EXECUTORS.register("tune")(_tune)


def build_executor(config: dict[str, Any], layout: PoolLayout) -> Executor:
    """Start the executor the config's ``executor.kind`` names (imports its backend lazily)."""
    return EXECUTORS.get(config["executor"]["kind"])(config, layout)
