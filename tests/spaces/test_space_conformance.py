"""The one suite every registered space kind must pass (a new kind needs a row in CASES)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mergesweep.errors import SpaceError
from mergesweep.spaces import SPACES, build_space

ATTN_MLP = {"attn": r"\.attention\.", "mlp": r"\.mlp\."}

# kind -> (options, expected dim over 102 tensors / 6 layers / 4 experts, other options)
CASES: dict[str, tuple[dict, int, dict]] = {
    "modelwise": ({}, 4, {"init": 0.5}),
    "layerwise": ({}, (6 + 2) * 4, {"granularity": "tensor"}),
    "groupwise": ({"groups": ATTN_MLP}, 3 * 4, {"groups": ATTN_MLP, "per_layer": True}),
    "density": ({}, 4 + 4, {"search": "density"}),
    "lines": ({}, 2, {"per_expert": True}),
    "anchors": ({}, 3 * 4, {"k": 4}),
}
KINDS = SPACES.names()


def test_every_registered_kind_has_a_case():
    assert sorted(CASES) == KINDS
    for kind in KINDS:
        assert SPACES.get(kind).kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_dim_is_the_expected_count(kind, layout):
    options, dim, _ = CASES[kind]
    space = build_space(kind, layout, options)
    assert space.dim == dim
    assert len(set(space.names())) == dim


@pytest.mark.parametrize("kind", KINDS)
def test_init_point_is_in_bounds_and_gives_a_t_by_n_plan(kind, layout):
    space = build_space(kind, layout, CASES[kind][0])
    point = space.init_point()
    assert list(point) == space.names()
    for p in space.params:
        assert p.low <= point[p.name] <= p.high
        assert p.low < p.high
    plan = space.to_plan(point)
    assert plan.coefficients.shape == (102, 4)
    assert np.isfinite(plan.coefficients).all()
    if plan.densities is not None:
        assert plan.densities.shape == (102, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_moves_the_plan(kind, layout):
    """No dead parameter: changing any one of them changes the plan."""
    space = build_space(kind, layout, CASES[kind][0])
    point = space.init_point()
    base = space.to_plan(point)
    for p in space.params:
        moved = dict(point, **{p.name: p.high if point[p.name] != p.high else p.low})
        plan = space.to_plan(moved)
        changed = not np.array_equal(plan.coefficients, base.coefficients)
        if plan.densities is not None:
            changed |= not np.array_equal(plan.densities, base.densities)
        assert changed, p.name


@pytest.mark.parametrize("kind", KINDS)
def test_points_outside_bounds_raise_naming_the_parameter(kind, layout):
    space = build_space(kind, layout, CASES[kind][0])
    for p in (space.params[0], space.params[-1]):
        for bad in (p.high + 0.01, p.low - 0.01, float("nan")):
            point = dict(space.init_point(), **{p.name: bad})
            with pytest.raises(SpaceError, match=rf"parameter '{re.escape(p.name)}' = .*bounds"):
                space.to_plan(point)
    point = dict(space.init_point(), **{space.params[0].name: "high"})
    with pytest.raises(SpaceError, match="is not a number"):
        space.to_plan(point)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_and_extra_parameters_raise(kind, layout):
    space = build_space(kind, layout, CASES[kind][0])
    point = space.init_point()
    missing = space.params[-1].name
    del point[missing]
    with pytest.raises(SpaceError, match=rf"lacks parameter\(s\) \['{re.escape(missing)}'\]"):
        space.to_plan(point)
    extra = dict(space.init_point(), bogus=0.1)
    with pytest.raises(SpaceError, match=rf"unknown parameter\(s\) \['bogus'\] for a {kind}"):
        space.to_plan(extra)


@pytest.mark.parametrize("kind", KINDS)
def test_hash_is_stable_and_follows_options_and_layout(kind, layout, layout_of):
    options, _, other = CASES[kind]
    first = build_space(kind, layout, options).hash()
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert build_space(kind, make_copy(layout, layout_of), options).hash() == first
    assert build_space(kind, layout, other).hash() != first
    renamed = layout_of(experts=("a", "b", "c", "d"))
    assert build_space(kind, renamed, options).hash() != first


def make_copy(layout, layout_of):
    return layout_of(names=tuple(layout.names), experts=tuple(layout.experts))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", [0, 2])
def test_options_round_trip_through_json(kind, which, layout):
    """``options()`` is what the study stores: rebuilding from it gives the same space."""
    space = build_space(kind, layout, CASES[kind][which])
    stored = json.loads(json.dumps(space.options()))
    again = build_space(kind, layout, stored)
    assert again.hash() == space.hash()
    assert again.names() == space.names()
