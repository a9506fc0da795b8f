"""The botorch searcher: beats random, resumes from storage, spreads parallel points."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from mergesweep.errors import ConfigError
from mergesweep.pool import PoolLayout
from mergesweep.search import SearchContext, build_searcher, distributions
from mergesweep.search._botorch import Settings, suggest, turbo_state
from mergesweep.search.bo import SYSTEM_ATTR
from mergesweep.spaces import build_space

pytest.importorskip("botorch")
optuna.logging.set_verbosity(optuna.logging.WARNING)

EXPERTS = ("a", "b", "c")
LAYOUT = PoolLayout(experts=EXPERTS, names=("w",), shapes=((4,),), fingerprint="x")
PEAK = np.array([0.25, 0.7, 0.45])
# Small acquisition settings keep a suggestion around a second on a busy 2-core machine.
FAST = {"n_initial": 6, "num_restarts": 2, "raw_samples": 64, "mc_samples": 32, "threads": 1}


def peak(params: dict[str, float]) -> float:
    x = np.array([params[f"lambda.{e}"] for e in EXPERTS])
    return float(np.exp(-6 * ((x - PEAK) ** 2).sum()))


def run(storage, name: str, n: int, options=None, *, study="s", values=None) -> optuna.Study:
    """Ask/tell ``n`` trials in total (counting stored ones) with a freshly built sampler."""
    space = build_space("modelwise", LAYOUT, {})
    searcher = build_searcher(name, options)
    directions = ["maximize"] * (1 if values is None else 2)
    ctx = SearchContext(space, 0, directions, budget=n)
    st = optuna.create_study(
        storage=storage,
        study_name=study,
        directions=directions,
        sampler=searcher.sampler(ctx),
        load_if_exists=True,
    )
    dists = distributions(space)
    while len(st.trials) < n:
        trial = st.ask(dists)
        st.tell(trial, peak(trial.params) if values is None else values(trial.params))
    return st


@pytest.fixture(scope="module")
def bo_study(tmp_path_factory):
    """14 trials of ``bo`` (6 random + 8 model-based) in SQLite, built once."""
    storage = f"sqlite:///{tmp_path_factory.mktemp('bo') / 'bo.db'}"
    return storage, run(storage, "bo", 14, FAST)


def test_bo_beats_random_on_a_synthetic_function(bo_study):
    _, st = bo_study
    rnd = run(None, "random", 14)
    kinds = [t.system_attrs[SYSTEM_ATTR]["kind"] for t in st.trials]
    assert kinds == ["random"] * 6 + ["gp"] * 8
    first = max(t.value for t in st.trials[:6])
    assert st.best_value > max(rnd.best_value, first)
    assert st.best_value > 0.9  # within ~0.13 of the peak in 8 model-based steps


def test_bo_resumes_from_storage(bo_study, tmp_path):
    _, full = bo_study
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    run(storage, "bo", 9, FAST)  # "interrupted" after 9 trials
    resumed = run(storage, "bo", 14, FAST)  # a new sampler object over the stored trials
    for a, b in zip(full.trials, resumed.trials):
        assert a.params == pytest.approx(b.params, abs=1e-6)
    assert resumed.best_value == pytest.approx(full.best_value, abs=1e-9)


def _settings(**changes) -> Settings:
    base = {
        "acquisition": "logei",
        "kappa": 2.576,
        "xi": 0.0,
        "model": "gp",
        "kernel": "default",
        "num_restarts": 2,
        "raw_samples": 64,
        "mc_samples": 32,
        "saas_warmup": 16,
        "saas_samples": 16,
        "saas_thinning": 4,
        "turbo_success": 3,
        "turbo_failure": None,
    }
    return Settings(**{**base, **changes})


def test_pending_points_push_the_next_suggestion_away():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(8, 3, generator=g, dtype=torch.float64)
    Y = torch.tensor([[peak(dict(zip(["lambda.a", "lambda.b", "lambda.c"], x)))] for x in X])
    Y = Y.to(torch.float64)
    for acq in ("logei", "ucb"):
        s = _settings(acquisition=acq)
        x1, _ = suggest(X, Y, None, s, seed=3, timeout_s=30)
        again, _ = suggest(X, Y, None, s, seed=3, timeout_s=30)
        x2, _ = suggest(X, Y, x1[None], s, seed=3, timeout_s=30)
        torch.testing.assert_close(x1, again)  # same data, same seed: the same point
        assert (x2 - x1).norm() > 0.05, acq  # the in-flight point is not proposed twice


def test_parallel_asks_get_distinct_points(tmp_path):
    st = run(None, "bo", 6, FAST)  # the random initial design, complete
    dists = distributions(build_space("modelwise", LAYOUT, {}))
    asked = [st.ask(dists) for _ in range(3)]  # three workers ask before any result
    pts = np.array([[t.params[f"lambda.{e}"] for e in EXPERTS] for t in asked])
    infos = [st.trials[t.number].system_attrs[SYSTEM_ATTR] for t in asked]
    assert [i["pending"] for i in infos] == [0, 1, 2]
    gaps = [np.linalg.norm(pts[i] - pts[j]) for i in range(3) for j in range(i)]
    assert min(gaps) > 0.05


def test_several_objectives_use_qlognehvi():
    def two(params):
        return peak(params), -abs(params["lambda.a"] - 0.9)

    st = run(None, "bo", 8, {**FAST, "n_initial": 5}, values=two)
    kinds = [t.system_attrs[SYSTEM_ATTR]["kind"] for t in st.trials]
    assert kinds == ["random"] * 5 + ["gp"] * 3
    assert len(st.best_trials) >= 1
    with pytest.raises(ConfigError, match=r"acquisition: 'logei' handles one objective"):
        run(None, "bo", 2, {"acquisition": "logei"}, values=two)
    with pytest.raises(ConfigError, match=r"model: 'turbo' handles one objective"):
        run(None, "bo", 2, {"model": "turbo"}, values=two)
    with pytest.raises(ConfigError, match=r"'qlognehvi' needs several objectives"):
        run(None, "bo", 2, {"acquisition": "qlognehvi"})


def test_turbo_replays_its_trust_region_from_the_values():
    s = _settings(model="turbo")
    assert turbo_state([1.0, 2.0], 2, dim=2, settings=s).length == 0.8
    # 4 failures (max(4, dim)) halve the region, 3 successes double it back.
    st = turbo_state([1.0, 2.0, 0, 0, 0, 0], 2, dim=2, settings=s)
    assert st.length == pytest.approx(0.4)
    st = turbo_state([1.0, 2.0, 0, 0, 0, 0, 3, 4, 5], 2, dim=2, settings=s)
    assert st.length == pytest.approx(0.8)
    # 0.8 / 2⁷ < 0.5⁷ after 28 failures: the region is reset to 0.8
    st = turbo_state([1.0] + [0.0] * 28, 1, dim=2, settings=s)
    assert (st.length, st.restarts) == (pytest.approx(0.8), 1)
    study = run(None, "bo", 9, {**FAST, "model": "turbo"})
    info = study.trials[-1].system_attrs[SYSTEM_ATTR]
    assert info["kind"] == "turbo" and 0 < info["tr_length"] <= 1.6


@pytest.mark.slow  # JAX compiles NUTS on first use: ~1 minute on 2 cores
def test_saas_fits_a_sparse_axis_model():
    pytest.importorskip("numpyro")
    g = torch.Generator().manual_seed(1)
    X = torch.rand(10, 6, generator=g, dtype=torch.float64)
    Y = -((X[:, :1] - 0.3) ** 2)  # only the first axis matters
    x, info = suggest(X, Y, None, _settings(model="saas"), seed=0, timeout_s=60)
    assert x.shape == (6,) and bool(((x >= 0) & (x <= 1)).all())
    assert info["fit_s"] > 0


def test_dfmerge_recipe_defaults_and_bad_options():
    opts = build_searcher("dfmerge").options()
    assert (opts["n_initial"], opts["acquisition"], opts["xi"], opts["kernel"]) == (
        10,
        "logei",
        0.01,
        "matern",
    )
    assert build_searcher("dfmerge", {"acquisition": "ucb"}).kappa == 2.576
    with pytest.raises(ConfigError, match=r"searcher\.options\.model: 'sass' is not one of"):
        build_searcher("bo", {"model": "sass"})
    with pytest.raises(ConfigError, match=r"searcher\.options\.n_initial: expected an integer"):
        build_searcher("bo", {"n_initial": 0})
    with pytest.raises(ConfigError, match=r"searcher\.options: .*'beta'"):
        build_searcher("bo", {"beta": 2.0})
