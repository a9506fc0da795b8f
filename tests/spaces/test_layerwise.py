"""Layer-wise: per block of layers (plus embed/final) or per tensor."""

from __future__ import annotations

import pytest

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.spaces import LayerWise, build_space

EXPERTS = ("mnist", "svhn", "cars", "dtd")
BLOCKS = ["embed", *(f"layer{i}" for i in range(6)), "final"]


def test_space_over_six_layers_and_four_experts_reports_its_dim(layout):
    # the check: 6 layer blocks + embed + final, times 4 experts
    space = build_space("layerwise", layout, {"granularity": "block"})
    assert space.dim == 32
    assert space.names()[:8] == [f"lambda.mnist.{b}" for b in BLOCKS]
    assert space.names()[-1] == "lambda.dtd.final"


def test_block_coefficients_land_on_their_layers(layout):
    space = LayerWise(layout)
    point = {
        f"lambda.{e}.{b}": (10 * k + g) / 100
        for k, e in enumerate(EXPERTS)
        for g, b in enumerate(BLOCKS)
    }
    c = space.to_plan(point).coefficients
    for k in range(4):
        assert (c[0:4, k] == k / 10).all()  # embeddings: block 0
        for i in range(6):
            first = 4 + 16 * i
            assert (c[first : first + 16, k] == (10 * k + i + 1) / 100).all()
        assert (c[100:, k] == (10 * k + 7) / 100).all()  # final layernorm: block 7


def test_tensor_granularity_has_one_lambda_per_tensor_and_expert(layout):
    space = LayerWise(layout, granularity="tensor", low=-1, init=0)
    assert space.dim == 102 * 4
    assert space.names()[4] == "lambda.mnist.t004.layers.0.attention.q_proj.weight"
    assert space.names()[102] == "lambda.svhn.t000.embeddings.cls_token"
    assert space.options() == {"granularity": "tensor", "low": -1.0, "high": 1.0, "init": 0.0}
    point = {p.name: 0.0 for p in space.params}
    point["lambda.cars.t057.layers.3.attention.v_proj.bias"] = -0.5
    c = space.to_plan(point).coefficients
    assert c[57, 2] == -0.5
    assert (c != 0).sum() == 1


def test_custom_layer_regex(layout):
    space = LayerWise(layout, layer_regex=r"layers\.(\d+)")
    assert space.dim == 32
    assert space.options()["layer_regex"] == r"layers\.(\d+)"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"layer_regex": "(["}, ConfigError, r"space\.options\.layer_regex: bad regex"),
        (
            {"layer_regex": r"\.block\.(\d+)\."},
            SpaceError,
            r"space\.options\.layer_regex: .*no tensor",
        ),
        ({"granularity": "row"}, ConfigError, r"space\.options\.granularity: unknown value 'row'"),
        (
            {"granularity": "tensor", "layer_regex": r"\.(\d+)\."},
            ConfigError,
            r"space\.options\.layer_regex: only used with granularity 'block'",
        ),
    ],
)
def test_bad_options_name_the_option(layout, options, error, message):
    with pytest.raises(error, match=message):
        build_space("layerwise", layout, options)
