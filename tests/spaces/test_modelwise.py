"""Model-wise: one λ per expert on every tensor."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.errors import ConfigError
from mergesweep.plan import segments
from mergesweep.spaces import ModelWise, build_space


def test_one_lambda_per_expert_on_every_tensor(layout):
    space = build_space("modelwise", layout, None)
    assert space.names() == ["lambda.mnist", "lambda.svhn", "lambda.cars", "lambda.dtd"]
    assert [(p.low, p.high, p.init) for p in space.params] == [(0.0, 1.0, 0.3)] * 4
    plan = space.to_plan(
        {"lambda.mnist": 0.1, "lambda.svhn": 0.2, "lambda.cars": 0.7, "lambda.dtd": 1}
    )
    assert plan.coefficients.shape == (102, 4)
    assert (plan.coefficients == [0.1, 0.2, 0.7, 1.0]).all()
    assert plan.densities is None
    assert segments(plan.coefficients) == [(0, 102)]  # the kernel merges in one sweep


def test_bounds_options(layout):
    space = ModelWise(layout, low=-1, high=2, init=1)
    assert space.init_point() == dict.fromkeys(space.names(), 1.0)
    assert space.to_plan(dict.fromkeys(space.names(), -1.0)).coefficients.min() == -1.0
    with pytest.raises(ConfigError, match=r"space\.options\.low: 1\.0 must be below high = 0\.5"):
        ModelWise(layout, low=1, high=0.5, init=0.7)
    with pytest.raises(
        ConfigError, match=r"space\.options\.init: 1\.5 lies outside \[0\.0, 1\.0\]"
    ):
        ModelWise(layout, init=1.5)
    with pytest.raises(ConfigError, match=r"space\.options\.high: expected a number, got 'one'"):
        ModelWise(layout, high="one")
    with pytest.raises(ConfigError, match=r"space\.options\.low: expected a number, got True"):
        ModelWise(layout, low=True)
    assert np.isclose(ModelWise(layout, init=0).init_point()["lambda.dtd"], 0.0)
