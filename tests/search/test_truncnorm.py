"""SciPy's special functions under Optuna's TPE: the same quantiles, the same suggestions."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.samplers._tpe import _truncnorm as tn

from mergesweep.search.truncnorm import OPTUNA, TOLERANCE, use_scipy_truncnorm

NAMES = ("_log_ndtr", "_ndtri_exp", "_ndtr")


@pytest.fixture
def optunas_own():
    """Runs the block with Optuna's own functions, then puts SciPy's back."""
    assert use_scipy_truncnorm()
    ours = tn._log_ndtr, tn._ndtri_exp, tn._ndtr

    def swap(own: bool) -> None:
        if own:
            tn._log_ndtr, tn._ndtri_exp, tn._ndtr = (OPTUNA[n] for n in NAMES)
        else:
            tn._log_ndtr, tn._ndtri_exp, tn._ndtr = ours

    yield swap
    swap(False)


def test_quantiles_agree_with_optunas_including_the_tails(optunas_own) -> None:
    rng = np.random.default_rng(1)
    q = np.concatenate([rng.uniform(size=4000), [1e-12, 0.5, 1 - 1e-12]])
    a = np.concatenate([rng.normal(0.0, 12.0, size=4000), [-30.0, -1.0, 8.0]])
    b = a + np.abs(rng.normal(1.0, 6.0, size=a.size))
    ours = tn.ppf(q, a, b)
    optunas_own(True)
    theirs = tn.ppf(q, a, b)
    assert np.all(np.isfinite(ours))
    assert np.max(np.abs(ours - theirs)) <= TOLERANCE
    assert tn._log_ndtr is OPTUNA["_log_ndtr"]


def test_densities_agree_with_optunas_in_every_case(optunas_own) -> None:
    """logpdf's three mass cases (left tail, right tail, central), points outside and on the
    bounds, at the widths TPE uses."""
    rng = np.random.default_rng(2)
    a = np.concatenate([rng.normal(0.0, 6.0, size=3000), [-9.0, 0.5, -0.5]])
    b = a + np.abs(rng.normal(1.0, 4.0, size=a.size))
    z = np.concatenate([rng.uniform(a[:-3] - 0.2, b[:-3] + 0.2), [-9.0, 0.5, 0.0]])
    x = 0.25 + 1.5 * z  # logpdf standardises x with loc and scale; a and b already are
    ours = tn.logpdf(x, a, b, loc=0.25, scale=1.5)
    optunas_own(True)
    theirs = tn.logpdf(x, a, b, loc=0.25, scale=1.5)
    assert tn._ndtr is OPTUNA["_ndtr"]
    assert np.array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    assert finite.sum() > 2000
    assert np.max(np.abs(ours[finite] - theirs[finite])) <= TOLERANCE


def _points(seed: int) -> list[list[float]]:
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True)
    study = optuna.create_study(sampler=sampler)
    dists = {f"x{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(6)}
    for _ in range(20):
        trial = study.ask(dists)
        study.tell(trial, sum((v - 0.3) ** 2 for v in trial.params.values()))
    return [list(t.params.values()) for t in study.trials]


def test_tpe_suggests_the_same_points_with_either(optunas_own) -> None:
    ours = _points(3)
    optunas_own(True)
    theirs = _points(3)
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < 1e-12
