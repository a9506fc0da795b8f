"""Sweeps with the pool resident on a GPU: inline and on Ray workers that hold a GPU share.

Needs a CUDA device (skipped without one); run on a lent machine by
``benchmarks/device_run.sh``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import optuna
import pytest
import torch
from optuna.trial import TrialState
from rt_configs import stored_trials

from mergesweep.driver import run_sweep
from mergesweep.errors import ConfigError
from mergesweep.study import open_study

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device (GPU tests run on a lent GPU machine: benchmarks/device_run.sh)",
    ),
]


@pytest.fixture(scope="module")
def gpu_ray(runtime_dir) -> Iterator[int]:
    """A local Ray instance with this machine's GPUs (their count is yielded)."""
    import ray

    gpus = torch.cuda.device_count()
    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=gpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        yield gpus
    finally:
        ray.shutdown()


def _init_trial(cfg: dict) -> optuna.trial.FrozenTrial:
    (init,) = [t for t in stored_trials(cfg) if t.user_attrs.get("enqueued")]
    return init


def test_cuda_sweeps_score_like_the_cpu(make_config, gpu_ray) -> None:
    """The same enqueued point scores the same on the CPU, inline on the GPU, and on two Ray
    workers sharing the GPU; every trial of the GPU sweeps completes with its timings."""
    cpu = make_config(name="cpu", budget__trials=1, executor={"kind": "inline"})
    run_sweep(open_study(cpu), progress=False)
    reference = _init_trial(cpu).user_attrs["metrics"]

    inline = make_config(
        name="cuda_inline", budget__trials=4, executor={"kind": "inline"}, pool__device="cuda"
    )
    shared = make_config(
        name="cuda_ray",
        budget__trials=8,
        executor={"kind": "ray", "workers": 2, "threads": 1, "num_gpus": 0.5},
        pool__device="cuda",
    )
    for cfg, n in ((inline, 4), (shared, 8)):
        summary = run_sweep(open_study(cfg), progress=False)
        assert (summary.complete, summary.failed) == (n, 0)
        trials = stored_trials(cfg)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * n
        for t in trials:
            assert t.user_attrs["timings"]["merge_s"] > 0 and t.user_attrs["timings"]["eval_s"] > 0
        metrics = _init_trial(cfg).user_attrs["metrics"]
        # 100 examples per task: GPU and CPU logits differ in the last bits, so at most one
        # near-tie may flip per task.
        for task, value in reference.items():
            assert abs(metrics[task] - value) <= 0.01 + 1e-9, (cfg["name"], task)
    workers = {t.user_attrs["worker"] for t in stored_trials(shared)}
    assert len(workers) == 2  # both GPU actors served trials


def test_more_gpu_than_the_cluster_has_is_refused(make_config, gpu_ray) -> None:
    cfg = make_config(
        name="too_many",
        executor={"kind": "ray", "workers": 2, "threads": 1, "num_gpus": float(gpu_ray)},
        pool__device="cuda",
    )
    with pytest.raises(ConfigError, match=r"^executor\.num_gpus: 2 worker"):
        run_sweep(open_study(cfg), progress=False)
