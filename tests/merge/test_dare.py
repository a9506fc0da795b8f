"""DARE: seeded drop-and-rescale masks, then task arithmetic or TIES over the rescaled vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergesweep.errors import ConfigError, PoolError
from mergesweep.merge import PrepareContext, build_method


def dropped(pool, weights) -> list[dict[str, np.ndarray]]:
    """The original τₖ of every merged tensor, from the pool's files."""
    base, experts = weights(pool)
    return [{n: e[n] - base[n] for n in pool.layout.names} for e in experts]


@pytest.mark.parametrize("n_experts", [1, 2, 8])
@pytest.mark.parametrize("p", [0.3, 0.9])
def test_dare_linear_matches_direct_formula(file_pool, weights, plan, n_experts, p):
    pool = file_pool(n_experts)
    method = build_method("dare_linear", {"p": p})
    method.prepare(pool, PrepareContext(seed=7))
    assert pool.tau_owner == f"dare(p={p}, seed=7)"
    base, _ = weights(pool)
    taus = dropped(pool, weights)
    pl = plan(pool, seed=n_experts)
    method.apply(pool, pl)
    kept_total = entries = 0
    for i, name in enumerate(pool.layout.names):
        want = base[name].copy()
        for k, tau in enumerate(taus):
            got_tau = pool.flat_view(pool.tau[k], i).double().numpy()
            keep = got_tau != 0
            # every entry is dropped (0) or kept and rescaled by 1/(1 − p)
            np.testing.assert_allclose(got_tau[keep], tau[name][keep] / (1 - p), rtol=1e-5)
            kept_total += keep.sum()
            entries += keep.size
            want += pl.coefficients[i, k] * np.where(keep, tau[name] / (1 - p), 0.0)
        got = pool.flat_view(pool.live, i).double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # ~83 entries per expert: the kept fraction is Binomial(entries, 1 − p) / entries
    sd = np.sqrt(p * (1 - p) / entries)
    assert abs(kept_total / entries - (1 - p)) < 5 * sd


def test_masks_are_seeded_per_task_and_tensor(file_pool):
    masks = []
    for seed in (3, 3, 4):
        pool = file_pool(2)
        build_method("dare_linear").prepare(pool, PrepareContext(seed=seed))
        masks.append(pool.tau != 0)
    assert torch.equal(masks[0], masks[1])  # same seed: same masks (on any worker)
    assert not torch.equal(masks[0], masks[2])
    assert not torch.equal(masks[0][0], masks[0][1])  # experts draw their own masks


def test_dare_ties_is_ties_over_the_dropped_vectors(file_pool, plan):
    pool = file_pool(3)
    method = build_method("dare_ties", {"p": 0.5, "density": 0.6, "merge": "sum"})
    method.prepare(pool, PrepareContext(seed=1))
    pl = plan(pool, seed=2)
    method.apply(pool, pl)
    got = pool.live.clone()
    # TIES prepared on the same (already dropped) pool gives the same merge
    ties = build_method("ties", {"density": 0.6, "merge": "sum"})
    ties.prepare(pool, PrepareContext(seed=1))
    ties.apply(pool, pl)
    assert torch.equal(pool.live, got)
    undropped = file_pool(3, seed=0)
    ties.prepare(undropped, PrepareContext(seed=1))
    ties.apply(undropped, pl)
    assert not torch.allclose(undropped.live, got)


def test_prepare_twice_does_not_drop_twice(file_pool):
    pool = file_pool(2)
    method = build_method("dare_linear", {"p": 0.5})
    method.prepare(pool, PrepareContext(seed=0))
    once = pool.tau.clone()
    method.prepare(pool, PrepareContext(seed=0))
    assert torch.equal(pool.tau, once)
    with pytest.raises(PoolError, match=r"already rewritten by dare\(p=0.5, seed=0\)"):
        build_method("dare_linear", {"p": 0.2}).prepare(pool, PrepareContext(seed=0))


@pytest.mark.parametrize("p", [1.0, -0.1, "half"])
def test_bad_drop_rate(p):
    with pytest.raises(ConfigError, match=r"method\.options\.p: "):
        build_method("dare_ties", {"p": p})
