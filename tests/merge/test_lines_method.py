"""LiNeS merge: task arithmetic with depth-scaled coefficients, against a direct formula."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.errors import ConfigError
from mergesweep.merge import PrepareContext, build_method

# The file pool's layout: embed (before the layers) → first layer; norm (after) → last layer.
RELATIVE_DEPTH = {
    "embed.weight": 0.0,
    "layers.0.attn.bias": 0.0,
    "layers.0.attn.weight": 0.0,
    "layers.1.attn.weight": 0.5,
    "layers.1.mlp.weight": 0.5,
    "layers.2.mlp.weight": 1.0,
    "norm.weight": 1.0,
}


@pytest.mark.parametrize("n_experts", [1, 2, 8])
def test_lines_matches_direct_formula(file_pool, weights, plan, n_experts):
    pool = file_pool(n_experts)
    assert list(pool.layout.names) == list(RELATIVE_DEPTH)
    method = build_method("lines", {"alpha": 0.2, "beta": 0.6})
    method.prepare(pool, PrepareContext())
    p = plan(pool, seed=n_experts)
    method.apply(pool, p)
    base, experts = weights(pool)
    for i, name in enumerate(pool.layout.names):
        factor = 0.2 + 0.6 * RELATIVE_DEPTH[name]
        want = base[name] + sum(
            p.coefficients[i, k] * factor * (e[name] - base[name]) for k, e in enumerate(experts)
        )
        got = pool.flat_view(pool.live, i).double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_alpha_one_beta_zero_is_task_arithmetic(file_pool, plan):
    pool = file_pool(2)
    p = plan(pool)
    build_method("linear").apply(pool, p)
    want = pool.live.clone()
    method = build_method("lines", {"alpha": 1.0, "beta": 0.0})
    method.prepare(pool, PrepareContext())
    pool.reset()
    method.apply(pool, p)
    assert (pool.live - want).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("regex", "match"),
    [
        (r"layers\.\d+", "method.options.layer_regex: .*needs a capture group"),
        (r"blocks\.(\d+)\.", "method.options.layer_regex: .*finds a layer index in no tensor"),
        (r"\.(attn|mlp)\.", "method.options.layer_regex: .*captures 'attn'"),
    ],
)
def test_bad_layer_regex(file_pool, regex, match):
    pool = file_pool(1)
    method = build_method("lines", {"layer_regex": regex})
    with pytest.raises(ConfigError, match=match):
        method.prepare(pool, PrepareContext())
