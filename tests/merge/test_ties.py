"""TIES against a direct NumPy formula: trim, λ-scaled sign election, disjoint mean/sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergesweep.errors import ConfigError
from mergesweep.merge import PrepareContext, build_method
from mergesweep.plan import MergePlan


def ties_direct(taus: np.ndarray, lam: np.ndarray, dens: np.ndarray, merge: str) -> np.ndarray:
    """Merged task vector of one tensor: ``taus`` (N, n), per-expert ``lam`` and ``dens``."""
    n = taus.shape[1]
    trimmed = np.zeros_like(taus)
    for k, tau in enumerate(taus):
        keep = np.argsort(-np.abs(tau), kind="stable")[: round(dens[k] * n)]
        trimmed[k, keep] = tau[keep]
    v = lam[:, None] * trimmed
    elected = np.sign(v.sum(0))
    agree = (np.sign(v) == elected) & (v != 0)
    total = (v * agree).sum(0)
    if merge == "mean":
        total = total / np.maximum(agree.sum(0), 1)
    return total


def expected(pool, weights, plan: MergePlan, density: float, merge: str) -> dict[str, np.ndarray]:
    base, experts = weights(pool)
    out = {}
    for i, name in enumerate(pool.layout.names):
        taus = np.stack([e[name].ravel() - base[name].ravel() for e in experts])
        dens = plan.densities[i] if plan.densities is not None else np.full(len(experts), density)
        merged = ties_direct(taus, plan.coefficients[i], dens, merge)
        out[name] = base[name] + merged.reshape(base[name].shape)
    return out


@pytest.mark.parametrize("n_experts", [1, 2, 8])
@pytest.mark.parametrize("merge", ["mean", "sum"])
@pytest.mark.parametrize("with_densities", [False, True])
def test_ties_matches_direct_formula(file_pool, weights, plan, n_experts, merge, with_densities):
    pool = file_pool(n_experts)
    method = build_method("ties", {"density": 0.3, "merge": merge})
    method.prepare(pool, PrepareContext(seed=0))
    p = plan(pool, seed=n_experts, densities=with_densities)
    if n_experts > 1:
        p.coefficients[2, 1] = -0.7  # a negative coefficient flips that expert's vote
    method.apply(pool, p)
    want = expected(pool, weights, p, 0.3, merge)
    for i, name in enumerate(pool.layout.names):
        got = pool.flat_view(pool.live, i).double().numpy()
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_sign_election_uses_scaled_vectors(tmp_path):
    """One entry, two experts: +1 and −2 with λ = (3, 1) elect +, keeping only expert 0."""
    from safetensors.torch import save_file

    from mergesweep.pool import ModelPool, PoolSpec

    save_file({"w": torch.zeros(1)}, str(tmp_path / "b.safetensors"))
    save_file({"w": torch.ones(1)}, str(tmp_path / "e0.safetensors"))
    save_file({"w": -2 * torch.ones(1)}, str(tmp_path / "e1.safetensors"))
    pool = ModelPool(
        PoolSpec(
            str(tmp_path / "b.safetensors"),
            {"a": str(tmp_path / "e0.safetensors"), "b": str(tmp_path / "e1.safetensors")},
        )
    )
    method = build_method("ties", {"density": 1.0})
    method.prepare(pool, PrepareContext())
    method.apply(pool, MergePlan([[3.0, 1.0]]))
    assert pool.live.tolist() == [3.0]
    method.apply(pool, MergePlan([[1.0, 1.0]]))  # unscaled: − wins
    assert pool.live.tolist() == [-2.0]


def test_zero_density_keeps_the_base(file_pool, plan):
    pool = file_pool(2)
    method = build_method("ties", {"density": 0.0})
    method.prepare(pool, PrepareContext())
    method.apply(pool, plan(pool))
    assert torch.equal(pool.live, pool.base)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"density": 1.5}, r"method.options.density: must lie in \[0, 1\]"),
        ({"density": "dense"}, "method.options.density: expected a number"),
        ({"merge": "median"}, "method.options.merge: expected 'mean' or 'sum'"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        build_method("ties", options)


def test_apply_before_prepare_is_refused(file_pool, plan):
    pool = file_pool(2)
    with pytest.raises(RuntimeError, match="ties: call prepare"):
        build_method("ties").apply(pool, plan(pool))
