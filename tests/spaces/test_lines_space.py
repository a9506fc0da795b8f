"""LiNeS prior: α at the first layer, α + β at the last, linear in between."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.spaces import Lines, build_space


def test_shared_line_gives_alpha_first_and_alpha_plus_beta_last(layout):
    space = build_space("lines", layout, None)
    assert space.names() == ["alpha", "beta"]
    assert space.init_point() == {"alpha": 0.3, "beta": 0.0}
    c = space.to_plan({"alpha": 0.2, "beta": 0.5}).coefficients
    assert (c == c[:, :1]).all()  # one line for all experts
    for i in range(6):
        layer = c[4 + 16 * i : 4 + 16 * (i + 1), 0]
        np.testing.assert_allclose(layer, 0.2 + 0.5 * i / 5, rtol=0, atol=1e-15)
    assert (c[:20, 0] == 0.2).all()  # embeddings and layer 0: α
    assert (c[84:, 0] == 0.7).all()  # layer 5 and the final norm: α + β


def test_per_expert_lines(layout):
    space = Lines(layout, per_expert=True, beta_low=-1)
    assert space.dim == 8
    assert space.names()[:2] == ["alpha.mnist", "alpha.svhn"]
    point = {p.name: 0.0 for p in space.params}
    point |= {"alpha.cars": 1.0, "beta.cars": -1.0, "beta.dtd": 0.5}
    c = space.to_plan(point).coefficients
    np.testing.assert_allclose(c[[0, 4, 36, 84, 101], 2], [1.0, 1.0, 0.6, 0.0, 0.0])
    np.testing.assert_allclose(c[[0, 36, 101], 3], [0.0, 0.2, 0.5])  # layer 2: 0.5·2/5
    assert (c[:, :2] == 0).all()


def test_bad_options(layout):
    with pytest.raises(ConfigError, match=r"space\.options\.beta_init: 2\.0 lies outside"):
        Lines(layout, beta_init=2.0)
    with pytest.raises(ConfigError, match=r"space\.options\.per_expert: expected true or false"):
        Lines(layout, per_expert=1)
    with pytest.raises(SpaceError, match=r"space\.options\.layer_regex: .*no tensor"):
        Lines(layout, layer_regex=r"\.h\.(\d+)\.")
