"""Magnitude top-k against a direct formula, and the precision of the threshold table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergesweep.errors import ConfigError
from mergesweep.merge import PrepareContext, build_method
from mergesweep.merge.topk import EXACT_MAX, SAMPLE, MagnitudeTable
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool, PoolSpec


def top_magnitude(tau: np.ndarray, density: float) -> np.ndarray:
    keep = np.argsort(-np.abs(tau), kind="stable")[: round(density * tau.size)]
    out = np.zeros_like(tau)
    out[keep] = tau[keep]
    return out


@pytest.mark.parametrize("n_experts", [1, 2, 8])
@pytest.mark.parametrize("with_densities", [False, True])
def test_magnitude_matches_direct_formula(file_pool, weights, plan, n_experts, with_densities):
    pool = file_pool(n_experts)
    method = build_method("magnitude", {"density": 0.4})
    method.prepare(pool, PrepareContext(seed=0))
    p = plan(pool, seed=10 + n_experts, densities=with_densities)
    if with_densities:
        p.densities[0, 0], p.densities[-1, -1] = 0.0, 1.0  # the edges: drop all, keep all
    method.apply(pool, p)
    base, experts = weights(pool)
    for i, name in enumerate(pool.layout.names):
        want = base[name].ravel().copy()
        for k, e in enumerate(experts):
            d = p.densities[i, k] if with_densities else 0.4
            want += p.coefficients[i, k] * top_magnitude(e[name].ravel() - base[name].ravel(), d)
        got = pool.flat_view(pool.live, i).double().numpy().ravel()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_density_one_is_task_arithmetic(file_pool, plan):
    pool = file_pool(3)
    p = plan(pool, seed=5)
    linear = build_method("linear")
    linear.apply(pool, p)
    want = pool.live.clone()
    pool.reset()
    method = build_method("magnitude")
    method.prepare(pool, PrepareContext())
    method.apply(pool, p)
    torch.testing.assert_close(pool.live, want, rtol=0, atol=1e-6)


def test_table_density_precision_on_large_tensors(tmp_path):
    """Above EXACT_MAX entries the kept fraction stays within 0.003 of the asked density."""
    g = torch.Generator().manual_seed(0)
    shapes = {"mid.weight": (250, 200), "big.weight": (600, 500)}  # tabulated; sampled
    assert EXACT_MAX < 250 * 200 < SAMPLE < 600 * 500
    base = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    save_file(base, str(tmp_path / "b.safetensors"))
    expert = {
        n: t + torch.randn(t.shape, generator=g) * torch.rand(t.shape, generator=g) ** 3
        for n, t in base.items()
    }  # heavy-tailed magnitudes
    save_file(expert, str(tmp_path / "e.safetensors"))
    pool = ModelPool(
        PoolSpec(str(tmp_path / "b.safetensors"), {"a": str(tmp_path / "e.safetensors")})
    )
    table = MagnitudeTable(pool, seed=0)
    for density in (0.001, 0.01, 0.05, 0.2, 0.5, 0.77, 0.99):
        thr = table.thresholds(np.full((2, 1), density))
        for i in range(2):
            mags = pool.flat_view(pool.tau[0], i).abs()
            kept = (mags >= thr[i, 0]).double().mean().item()
            assert abs(kept - density) < 0.003, (pool.layout.names[i], density, kept)


def test_table_is_exact_on_small_tensors(file_pool):
    pool = file_pool(2)
    table = MagnitudeTable(pool)
    densities = np.random.default_rng(0).uniform(0, 1, (pool.layout.num_tensors, 2))
    thr = table.thresholds(densities)
    for i in range(pool.layout.num_tensors):
        for k in range(2):
            mags = pool.flat_view(pool.tau[k], i).abs().flatten()
            n = mags.numel()
            assert int((mags >= thr[i, k]).sum()) == round(densities[i, k] * n)


def test_bad_density_option():
    with pytest.raises(ConfigError, match=r"method.options.density: must lie in \[0, 1\]"):
        build_method("magnitude", {"density": -0.1})


def test_plan_densities_change_per_trial(file_pool):
    pool = file_pool(2)
    method = build_method("magnitude")
    method.prepare(pool, PrepareContext())
    coeffs = np.ones((pool.layout.num_tensors, 2))
    method.apply(pool, MergePlan(coeffs, np.full(coeffs.shape, 0.2)))
    sparse = (pool.live - pool.base).ne(0).double().mean().item()
    method.apply(pool, MergePlan(coeffs, np.full(coeffs.shape, 0.9)))
    dense = (pool.live - pool.base).ne(0).double().mean().item()
    assert sparse < 0.45 < 0.9 < dense
