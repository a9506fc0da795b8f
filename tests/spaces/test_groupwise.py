"""Group-wise: name-regex groups (attention vs MLP), optionally split by layer."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.spaces import GroupWise, build_space

ATTN_MLP = {"attn": r"\.attention\.", "mlp": r"\.mlp\."}


def test_attention_and_mlp_tensors_get_their_own_coefficients(layout):
    space = GroupWise(layout, groups=ATTN_MLP)
    assert space.names()[:3] == ["lambda.mnist.rest", "lambda.mnist.attn", "lambda.mnist.mlp"]
    point = {p.name: 0.0 for p in space.params}
    point.update({"lambda.svhn.attn": 0.1, "lambda.svhn.mlp": 0.2, "lambda.svhn.rest": 0.3})
    col = space.to_plan(point).coefficients[:, 1]
    names = np.array(layout.names)
    assert set(names[col == 0.1]) == {n for n in layout.names if ".attention." in n}
    assert set(names[col == 0.2]) == {n for n in layout.names if ".mlp." in n}
    assert ((col == 0.1).sum(), (col == 0.2).sum(), (col == 0.3).sum()) == (48, 24, 30)
    assert col[4 + 16 * 5 + 12] == 0.2  # vit.layers.5.mlp.fc1.weight
    assert col[4 + 16 * 5 + 8] == 0.3  # vit.layers.5.layernorm_before.weight
    assert (space.to_plan(point).coefficients[:, [0, 2, 3]] == 0).all()


def test_per_layer_splits_groups_by_block(layout):
    space = build_space("groupwise", layout, {"groups": ATTN_MLP, "per_layer": True})
    # attn × 6 layers, mlp × 6, rest × (embed, 6 layers of norms, final) = 20 groups
    assert space.dim == 20 * 4
    names = space.names()
    assert names[:3] == [
        "lambda.mnist.rest.embed",
        "lambda.mnist.attn.layer0",
        "lambda.mnist.rest.layer0",
    ]
    assert "lambda.mnist.attn.embed" not in names
    assert "lambda.dtd.rest.final" in names
    point = {p.name: 0.5 for p in space.params}
    point["lambda.cars.mlp.layer2"] = 0.9
    c = space.to_plan(point).coefficients
    assert np.flatnonzero(c[:, 2] == 0.9).tolist() == list(range(4 + 32 + 12, 4 + 32 + 16))


def test_group_order_is_part_of_the_hash(layout):
    # k_proj goes to whichever group comes first: same parameters, other tensors behind them
    a = GroupWise(layout, groups={"a": "q_proj|k_proj", "b": "k_proj|v_proj"})
    b = GroupWise(layout, groups={"b": "k_proj|v_proj", "a": "q_proj|k_proj"})
    assert a.names() == b.names()
    k_proj = 4 + 2  # vit.layers.0.attention.k_proj.weight
    point = {p.name: 0.1 if p.name.endswith(".a") else 0.2 for p in a.params}
    assert a.to_plan(point).coefficients[k_proj, 0] == 0.1
    assert b.to_plan(point).coefficients[k_proj, 0] == 0.2
    assert a.hash() != b.hash()
    assert a.options()["groups"] == [["a", "q_proj|k_proj"], ["b", "k_proj|v_proj"]]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"groups": {**ATTN_MLP, "conv": r"\.conv\."}},
            SpaceError,
            r"space\.options\.groups\.conv: .*selects no tensor",
        ),
        ({"groups": {"attn": "(["}}, ConfigError, r"space\.options\.groups\.attn: bad regex"),
        (
            {"groups": ATTN_MLP, "per_layer": "yes"},
            ConfigError,
            r"space\.options\.per_layer: expected true or false",
        ),
        (
            {"groups": ATTN_MLP, "layer_regex": r"\.(\d+)\."},
            ConfigError,
            r"space\.options\.layer_regex: only used with per_layer",
        ),
        (
            {"groups": ATTN_MLP, "per_layer": True, "layer_regex": r"\.h\.(\d+)\."},
            SpaceError,
            r"space\.options\.layer_regex: .*no tensor",
        ),
        ({}, ConfigError, r"space\.options: space 'groupwise' needs option 'groups'"),
    ],
)
def test_bad_options_name_the_option(layout, options, error, message):
    with pytest.raises(error, match=message):
        build_space("groupwise", layout, options)
