"""The resident evaluator: what it prepares while loading."""

from __future__ import annotations

from mergesweep.merge import kernels
from mergesweep.runtime.worker import Evaluator
from mergesweep.study import open_study


def test_a_worker_tunes_its_merge_kernel_while_loading(make_config) -> None:
    """The timing of the kernel candidates belongs to the worker's load, not its first trial."""
    kernels._CHOSEN.clear()
    setup = open_study(make_config())
    evaluator = Evaluator(setup.config, setup.layout)
    pool = evaluator.pool
    layout = kernels._layout(pool.live, pool.tau)
    assert (layout, pool.live.dtype, pool.tau.dtype, pool.tau.shape[0]) in kernels._CHOSEN
    kernels.tune_kernel(pool.live, pool.tau)  # again: nothing new is timed
    assert len(kernels._CHOSEN) == 1
