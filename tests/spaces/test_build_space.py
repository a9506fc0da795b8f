"""build_space: registry lookup and option checking shared by every kind."""

from __future__ import annotations

import pytest

from mergesweep.errors import ConfigError, UnknownNameError
from mergesweep.spaces import SPACES, LayerWise, build_space, space_options


def test_builds_the_registered_class_with_its_options(layout):
    space = build_space("layerwise", layout, {"granularity": "tensor", "init": 0.5})
    assert type(space) is LayerWise
    assert space.init_point()["lambda.dtd.t101.layernorm.bias"] == 0.5
    assert space_options(SPACES.get("anchors")) == ["k", "low", "high", "init", "layer_regex"]


def test_unknown_kind_lists_the_valid_ones(layout):
    with pytest.raises(
        UnknownNameError,
        match=r"space\.kind: unknown space 'taskwise'; choose one of anchors, density, groupwise, "
        r"layerwise, lines, modelwise",
    ):
        build_space("taskwise", layout, {})


def test_unknown_option_is_named_never_dropped(layout):
    with pytest.raises(
        ConfigError,
        match=r"space\.options: unknown option 'lamda' for space 'modelwise'; "
        r"valid options: low, high, init",
    ):
        build_space("modelwise", layout, {"lamda": 0.3})


def test_options_must_be_a_mapping(layout):
    with pytest.raises(ConfigError, match=r"space\.options: expected a mapping, got \[0\.3\]"):
        build_space("modelwise", layout, [0.3])
