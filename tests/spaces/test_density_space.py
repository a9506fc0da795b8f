"""Density: Evo-Merging's per-expert densities α and signed scales β, in its two stages."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.spaces import Density, build_space

EXPERTS = ("mnist", "svhn", "cars", "dtd")


def test_both_searches_densities_and_lambdas(layout):
    space = Density(layout)
    assert space.names() == [f"density.{e}" for e in EXPERTS] + [f"lambda.{e}" for e in EXPERTS]
    assert [(p.low, p.high, p.init) for p in space.params[:4]] == [(0.0, 1.0, 1.0)] * 4
    assert [(p.low, p.high, p.init) for p in space.params[4:]] == [(-1.5, 1.5, 0.25)] * 4
    point = {"density.mnist": 0.1, "density.svhn": 0.2, "density.cars": 0.3, "density.dtd": 0.4}
    point |= {"lambda.mnist": -1.5, "lambda.svhn": 0.5, "lambda.cars": 1.0, "lambda.dtd": 1.5}
    plan = space.to_plan(point)
    assert plan.densities.shape == plan.coefficients.shape == (102, 4)
    assert (plan.densities == [0.1, 0.2, 0.3, 0.4]).all()
    assert (plan.coefficients == [-1.5, 0.5, 1.0, 1.5]).all()
    with pytest.raises(
        SpaceError, match=r"'lambda\.dtd' = 1\.6 is outside its bounds \[-1\.5, 1\.5\]"
    ):
        space.to_plan(point | {"lambda.dtd": 1.6})


def test_stage_one_searches_densities_with_lambda_fixed_at_one_over_n(layout):
    space = build_space("density", layout, {"search": "density"})
    assert space.names() == [f"density.{e}" for e in EXPERTS]
    plan = space.to_plan({f"density.{e}": 0.5 for e in EXPERTS})
    assert (plan.coefficients == 0.25).all()
    assert (plan.densities == 0.5).all()
    fixed = Density(
        layout, search="density", fixed_lambda={"mnist": 1, "svhn": 2, "cars": 3, "dtd": -1}
    )
    plan = fixed.to_plan(fixed.init_point())
    assert (plan.coefficients == [1, 2, 3, -1]).all()
    assert (plan.densities == 1.0).all()


def test_stage_two_searches_lambdas_with_densities_fixed_at_stage_one_best(layout):
    space = Density(layout, search="lambda", fixed_density=[0.2, 0.4, 0.6, 0.8])
    assert space.names() == [f"lambda.{e}" for e in EXPERTS]
    assert space.init_point() == dict.fromkeys(space.names(), 0.25)
    plan = space.to_plan(
        {"lambda.mnist": -0.5, "lambda.svhn": 0, "lambda.cars": 0.1, "lambda.dtd": 0.2}
    )
    np.testing.assert_array_equal(plan.densities[57], [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_array_equal(plan.coefficients[0], [-0.5, 0, 0.1, 0.2])
    assert Density(layout, search="lambda").options()["fixed_density"] == [1.0] * 4
    assert (
        Density(layout, search="lambda", fixed_density=0.3)
        .to_plan(space.init_point())
        .densities.max()
        == 0.3
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"search": "alpha"}, r"space\.options\.search: unknown value 'alpha'; choose one of both"),
        ({"fixed_density": 0.5}, r"space\.options\.fixed_density: only used with search 'lambda'"),
        (
            {"search": "lambda", "fixed_lambda": 0.5},
            r"space\.options\.fixed_lambda: only used with search 'density'",
        ),
        (
            {"search": "lambda", "fixed_density": 1.2},
            r"space\.options\.fixed_density: 1\.2 lies outside \[0, 1\]",
        ),
        (
            {"search": "lambda", "fixed_density": [0.5, 0.5]},
            r"space\.options\.fixed_density: 2 values given for 4 experts",
        ),
        (
            {"search": "density", "fixed_lambda": {"mnist": 1}},
            r"space\.options\.fixed_lambda: keys \['mnist'\] must be exactly",
        ),
        ({"density_low": -0.1}, r"space\.options\.density_low: -0\.1 must be at least 0"),
        ({"density_low": 1.0}, r"space\.options\.density_low: 1\.0 must be below density_high"),
        ({"init": 2.0}, r"space\.options\.init: 2\.0 lies outside \[-1\.5, 1\.5\]"),
    ],
)
def test_bad_options_name_the_option(layout, options, message):
    with pytest.raises(ConfigError, match=message):
        build_space("density", layout, options)
