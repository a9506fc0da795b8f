"""MAP's surrogates (quadratic through a link, least squares) and the NSGA-II on them."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.pareto import hypervolume, nondominated
from mergesweep.search.nsga import crowding, nsga2, ranks
from mergesweep.search.surrogate import (
    Quadratic,
    choose_link,
    cv_r2,
    fit_quadratic,
    quad_features,
)


def test_features_follow_the_documented_order() -> None:
    f = quad_features(np.array([[2.0, 3.0]]))
    # c1², c2², c1·c2, c1, c2, 1
    assert f.tolist() == [[4.0, 9.0, 6.0, 2.0, 3.0, 1.0]]
    assert quad_features(np.zeros((5, 4))).shape == (5, 15)


@pytest.mark.parametrize("link", ["identity", "sigmoid", "softplus"])
def test_fit_recovers_a_known_quadratic(link: str) -> None:
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(30, 3))
    true = np.array([-2.0, 0.5, 1.0, 0.8, -0.3, 0.2, 1.5, -1.0, 0.4, -0.2])
    y = Quadratic(true, link).predict(u)
    model = fit_quadratic(u, y, link)
    assert model.coef == pytest.approx(true, abs=1e-4)
    probe = rng.uniform(size=(50, 3))  # and predicts unseen points
    assert np.abs(model.predict(probe) - Quadratic(true, link).predict(probe)).max() < 1e-5
    assert cv_r2(u, y, link) == pytest.approx(1.0, abs=1e-6)


def test_fit_with_noise_stays_close_and_r2_drops() -> None:
    rng = np.random.default_rng(1)
    u = rng.uniform(size=(40, 2))
    true = np.array([-3.0, -2.0, 1.0, 2.0, 1.5, -0.5])
    clean = Quadratic(true, "sigmoid").predict(u)
    noisy = clean + rng.normal(0, 0.02, size=len(u))
    model = fit_quadratic(u, noisy, "sigmoid")
    assert np.abs(model.predict(u) - clean).max() < 0.03
    r2 = cv_r2(u, noisy, "sigmoid")
    assert 0.8 < r2 < 1.0
    assert np.isnan(cv_r2(u[:7], noisy[:7], "sigmoid"))  # too few points to hold any out


def test_link_choice() -> None:
    assert choose_link("accuracy", "maximize", [0.2, 0.9]) == "sigmoid"
    assert choose_link("cross_entropy", "minimize", [0.3, 2.5]) == "softplus"
    assert choose_link("score", "maximize", [3.0, 5.0]) == "identity"
    assert choose_link("delta", "minimize", [-1.0, 2.0]) == "identity"
    assert Quadratic.from_dict(Quadratic(np.ones(3), "softplus").to_dict()).link == "softplus"


def test_ranks_and_crowding() -> None:
    loss = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0], [2.0, 2.0]])
    assert ranks(loss).tolist() == [0, 0, 0, 1, 2]
    cd = crowding(loss[:3])
    assert np.isinf(cd[0]) and np.isinf(cd[1]) and cd[2] == pytest.approx(2.0)


def test_nsga2_finds_the_known_front() -> None:
    # f1 = x², f2 = (x − 1)² on the first coordinate (the rest is noise-free filler):
    # the front is x ∈ [0, 1], f2 = (1 − √f1)²; its hypervolume to (1, 1) is 1 − 1/6.
    def losses(x: np.ndarray) -> np.ndarray:
        return np.stack([x[:, 0] ** 2 + x[:, 1], (x[:, 0] - 1) ** 2 + x[:, 1]], axis=1)

    xs, fs = nsga2(losses, 2, seed=0)
    assert len(xs) == 100
    assert nondominated(fs, ["minimize"] * 2).all()
    assert np.abs(xs[:, 1]).max() < 0.02
    hv = hypervolume(fs, [1.0, 1.0], ["minimize"] * 2)
    assert hv == pytest.approx(5 / 6, abs=0.01)
    again, _ = nsga2(losses, 2, seed=0)
    assert np.array_equal(xs, again)  # seeded
