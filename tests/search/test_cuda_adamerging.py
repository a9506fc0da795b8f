"""AdaMerging's entropy descent with the pool on a GPU follows the CPU's (needs CUDA)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

import mergesweep.api as api
from mergesweep.search.adamerging import ATTR

from .test_adamerging import config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device (GPU tests run on a lent GPU machine: benchmarks/device_run.sh)",
    ),
]


def _run(zoo, tmp_path, device: str) -> list[optuna.trial.FrozenTrial]:
    cfg = config(zoo, tmp_path, name=f"ada_{device}")
    cfg["pool"]["device"] = device
    assert api.run(cfg).complete == 1
    study = optuna.load_study(study_name=cfg["name"], storage=cfg["storage"])
    return sorted(study.trials, key=lambda t: t.user_attrs[ATTR]["step"])


def test_cuda_descent_matches_the_cpu(digits_zoo, tmp_path) -> None:
    cpu, cuda = _run(digits_zoo, tmp_path, "cpu"), _run(digits_zoo, tmp_path, "cuda")
    assert [t.user_attrs[ATTR]["step"] for t in cuda] == [2, 4, 6]
    entropies = [sum(t.user_attrs["entropy"].values()) for t in cuda]
    assert entropies == sorted(entropies, reverse=True)
    for a, b in zip(cuda, cpu):
        assert a.params.keys() == b.params.keys()
        # model-wise λ: each gradient sums over every merged weight, far from Adam's sign noise
        lam_a = np.array([a.params[k] for k in sorted(a.params)])
        lam_b = np.array([b.params[k] for k in sorted(b.params)])
        np.testing.assert_allclose(lam_a, lam_b, atol=5e-3)
        np.testing.assert_allclose(
            sum(a.user_attrs["entropy"].values()), sum(b.user_attrs["entropy"].values()), rtol=1e-3
        )
