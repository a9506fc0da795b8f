"""The suite every registered merge method passes, on a tiny BERT pool with two experts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.merge import METHODS, build_method
from mergesweep.plan import MergePlan

# Options that keep every method fast on the tiny pool (the rest run at their defaults).
OPTIONS = {"fisher": {"samples": 4}, "magnitude": {"density": 0.5}}


@pytest.fixture(params=METHODS.names())
def prepared(request, bert_pool, context):
    pool = bert_pool(2)
    method = build_method(request.param, OPTIONS.get(request.param))
    method.prepare(pool, context(pool))
    return method, pool


def test_apply_is_finite_deterministic_and_in_place(prepared, plan):
    method, pool = prepared
    ptr = pool.live.data_ptr()
    p = plan(pool, seed=1, densities=True)
    method.apply(pool, p)
    first = pool.live.clone()
    assert torch.isfinite(first).all()
    assert (first - pool.base).abs().max() > 1e-3  # it merged something
    method.apply(pool, plan(pool, seed=2, densities=True))
    assert not torch.equal(pool.live, first)
    method.apply(pool, p)
    assert torch.equal(pool.live, first)
    assert pool.live.data_ptr() == ptr


def test_task_models_see_the_merge_and_keep_their_heads(prepared, plan):
    method, pool = prepared
    method.apply(pool, plan(pool, seed=3))
    heads = {}
    for task, path in pool.spec.experts.items():
        state = pool.model(task).state_dict()
        for i, name in enumerate(pool.layout.names):
            view = pool.flat_view(pool.live, i)
            assert state[name].data_ptr() == view.data_ptr()
            assert torch.equal(state[name], view)
        own = load_file(f"{path}/model.safetensors")["classifier.weight"]
        assert torch.equal(state["classifier.weight"], own)
        heads[task] = own
    assert not torch.equal(heads["t0"], heads["t1"])


def test_functional_matches_apply_and_has_gradients(prepared, plan):
    method, pool = prepared
    p = plan(pool, seed=4)
    method.apply(pool, p)
    coeffs = torch.tensor(p.coefficients, dtype=torch.float32, requires_grad=True)
    merged = method.functional(pool, coeffs)
    assert list(merged) == list(pool.layout.names)
    for i, name in enumerate(pool.layout.names):
        torch.testing.assert_close(merged[name], pool.flat_view(pool.live, i), rtol=1e-5, atol=1e-6)
    sum(t.square().sum() for t in merged.values()).backward()
    assert coeffs.grad is not None and torch.isfinite(coeffs.grad).all()
    assert coeffs.grad.abs().sum() > 0


def test_plan_for_another_layout_is_refused(prepared):
    method, pool = prepared
    bad = MergePlan.uniform(pool.layout.num_tensors + 1, [0.3] * pool.layout.num_experts)
    with pytest.raises(SpaceError, match="plan: coefficients have shape"):
        method.apply(pool, bad)


@pytest.mark.parametrize("name", METHODS.names())
def test_unknown_option_is_refused(name):
    with pytest.raises(ConfigError, match=f"method.options: .*'{name}'"):
        build_method(name, {"no_such_option": 1})
