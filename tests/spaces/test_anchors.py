"""Anchors: k values per expert at evenly spaced depths, linearly interpolated."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.spaces import Anchors, build_space

EXPERTS = ("mnist", "svhn", "cars", "dtd")


def layer_values(c: np.ndarray, k: int) -> list[float]:
    return [float(c[4 + 16 * i, k]) for i in range(6)]


def test_three_anchors_interpolate_exactly(layout):
    space = build_space("anchors", layout, None)
    assert space.names()[:3] == [
        "lambda.mnist.anchor0",
        "lambda.mnist.anchor1",
        "lambda.mnist.anchor2",
    ]
    assert space.positions().tolist() == [0.0, 0.5, 1.0]
    point = {p.name: 0.0 for p in space.params}
    point |= {"lambda.svhn.anchor0": 0.0, "lambda.svhn.anchor1": 1.0, "lambda.svhn.anchor2": 0.5}
    c = space.to_plan(point).coefficients
    # depths 0..5 map to 0, .2, .4, .6, .8, 1; anchors at 0, .5, 1
    np.testing.assert_allclose(layer_values(c, 1), [0.0, 0.4, 0.8, 0.9, 0.7, 0.5], atol=1e-15)
    assert (c[:4, 1] == 0.0).all() and (c[100:, 1] == 0.5).all()  # embed at depth 0, final at 5
    for i in range(6):  # every tensor of a layer shares its value
        assert np.unique(c[4 + 16 * i : 20 + 16 * i, 1]).size == 1
    assert (c[:, [0, 2, 3]] == 0).all()


def test_k_equal_to_layers_gives_one_free_value_per_layer(layout):
    space = Anchors(layout, k=6, low=-1)
    point = {f"lambda.{e}.anchor{j}": (j - 2) / 10 for e in EXPERTS for j in range(6)}
    c = space.to_plan(point).coefficients
    np.testing.assert_allclose(layer_values(c, 3), [-0.2, -0.1, 0.0, 0.1, 0.2, 0.3], atol=1e-15)


def test_one_anchor_is_modelwise_and_two_are_a_line(layout):
    one = Anchors(layout, k=1)
    assert one.dim == 4
    c = one.to_plan(dict(zip(one.names(), [0.1, 0.2, 0.3, 0.4]))).coefficients
    assert (c == [0.1, 0.2, 0.3, 0.4]).all()
    two = Anchors(layout, k=2)
    point = {p.name: 0.2 if p.name.endswith("0") else 0.7 for p in two.params}
    np.testing.assert_allclose(
        layer_values(two.to_plan(point).coefficients, 0), 0.2 + 0.5 * np.arange(6) / 5
    )


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"k": 7},
            SpaceError,
            r"space\.options\.k: 7 anchors need at least 7 layers; layer_regex finds 6",
        ),
        ({"k": 0}, ConfigError, r"space\.options\.k: expected an integer ≥ 1, got 0"),
        ({"k": 2.5}, ConfigError, r"space\.options\.k: expected an integer ≥ 1, got 2\.5"),
        ({"layer_regex": r"(\d+"}, ConfigError, r"space\.options\.layer_regex: bad regex"),
    ],
)
def test_bad_options_name_the_option(layout, options, error, message):
    with pytest.raises(error, match=message):
        build_space("anchors", layout, options)
