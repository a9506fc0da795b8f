"""Evo-Merging: the two stages, the penalty, the CMA-ES replay, the stage switch and resume."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from mergesweep.errors import ConfigError
from mergesweep.pool import PoolLayout
from mergesweep.search import SearchContext, build_searcher, distributions
from mergesweep.search.evo_merging import GEN_ATTR
from mergesweep.spaces import build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAYOUT = PoolLayout(experts=("a", "b"), names=("enc.w",), shapes=((4,),), fingerprint="x")
OPTS = {"stage1_trials": 6, "stage2_trials": 6, "popsize": 3}


def _loss(p: dict[str, float]) -> float:
    # Best densities (0.7, 0.9), best scales (0.8, −0.2): a smooth "cross-entropy".
    return (
        1.0
        + (p["density.a"] - 0.7) ** 2
        + (p["density.b"] - 0.9) ** 2
        + (p["lambda.a"] - 0.8) ** 2
        + (p["lambda.b"] + 0.2) ** 2
    )


def _open(storage: str, opts=OPTS):
    space = build_space("density", LAYOUT, {})
    evo = build_searcher("evo_merging", opts)
    study = optuna.create_study(
        storage=storage,
        study_name="evo",
        direction="minimize",
        sampler=evo.sampler(SearchContext(space, 0, ["minimize"], budget=12)),
        load_if_exists=True,
    )
    return space, evo, study


def _step(space, evo, study, n: int) -> None:
    dists = distributions(space)
    for _ in range(n):
        trial = study.ask(dists)
        study.tell(trial, evo.transform_values([_loss(trial.params)], trial.params))


def test_stages_switch_and_resume_in_stage_two(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    space, evo, study = _open(storage)
    assert evo.max_trials(space) == 12
    _step(space, evo, study, 7)
    trials = study.get_trials()
    stage1, stage2 = trials[:6], trials[6:]
    for t in stage1:  # β fixed at 1/N, α searched from 1 with σ0 0.05
        assert t.params["lambda.a"] == t.params["lambda.b"] == 0.5
        assert 0.7 < t.params["density.a"] <= 1.0
        # value = loss + 0.05·mean|α|
        alpha = np.array([t.params["density.a"], t.params["density.b"]])
        assert t.value == pytest.approx(_loss(t.params) + 0.05 * np.abs(alpha).mean())
    # Generations of popsize 3 were told: trials 3..5 were sampled by generation 1.
    assert [t.system_attrs[GEN_ATTR] for t in stage1] == [[1, 0]] * 3 + [[1, 1]] * 3
    best = min(stage1, key=lambda t: t.value)
    (first2,) = stage2
    assert first2.params["density.a"] == best.params["density.a"]
    assert first2.params["density.b"] == best.params["density.b"]
    assert first2.params["lambda.a"] != 0.5
    beta = np.array([first2.params["lambda.a"], first2.params["lambda.b"]])
    assert first2.value == pytest.approx(_loss(first2.params) + 0.05 * np.abs(beta).mean())
    # Resume with a new searcher over the same storage: still stage 2, same α.
    space2, evo2, again = _open(storage)
    _step(space2, evo2, again, 5)
    rest = again.get_trials()[7:]
    assert all(t.params["density.a"] == best.params["density.a"] for t in rest)
    assert [t.system_attrs[GEN_ATTR][0] for t in rest] == [2] * 5
    assert [t.system_attrs[GEN_ATTR][1] for t in again.get_trials()[6:]] == [0, 0, 0, 1, 1, 1]


def test_replay_gives_the_same_point_as_an_uninterrupted_run(tmp_path) -> None:
    a = f"sqlite:///{tmp_path / 'a.sqlite'}"
    b = f"sqlite:///{tmp_path / 'b.sqlite'}"
    space, evo, study = _open(a)
    _step(space, evo, study, 9)
    space, evo, other = _open(b)
    _step(space, evo, other, 4)
    space, evo, other = _open(b)  # "restart" mid-generation
    _step(space, evo, other, 5)
    assert [t.params for t in study.get_trials()] == [t.params for t in other.get_trials()]


def test_modelwise_space_runs_stage_two_only_and_penalty_sign(tmp_path) -> None:
    space = build_space("modelwise", LAYOUT, {})
    evo = build_searcher("evo_merging", {"stage1_trials": 4, "stage2_trials": 5})
    evo.sampler(SearchContext(space, 0, ["maximize"], budget=9))
    assert evo.max_trials(space) == 5
    # A maximised metric gets the penalty subtracted.
    assert evo.transform_values([0.8], {"lambda.a": 0.4, "lambda.b": -0.2}) == pytest.approx(
        [0.8 - 0.05 * 0.3]
    )


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match=r"searcher\.options\.stage1_trials/stage2_trials"):
        build_searcher("evo_merging", {"stage1_trials": 0, "stage2_trials": 0})
    with pytest.raises(ConfigError, match=r"searcher\.options\.popsize/sigma0"):
        build_searcher("evo_merging", {"sigma0": 0.0})
    with pytest.raises(ConfigError, match=r"searcher\.options: .*'population'"):
        build_searcher("evo_merging", {"population": 3})
    space = build_space("density", LAYOUT, {"low": 0.0, "high": 1.0})
    evo = build_searcher("evo_merging", {"stage1_lambda": 2.0})
    with pytest.raises(ConfigError, match=r"searcher\.options\.stage1_lambda: 2\.0 lies outside"):
        evo.max_trials(space)


def test_parallel_asks_need_no_generation_barrier(tmp_path) -> None:
    space, evo, study = _open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    dists = distributions(space)
    # Five workers ask at once (population 3): five distinct generation-0 points.
    running = [study.ask(dists) for _ in range(5)]
    points = {tuple(t.params.values()) for t in running}
    assert len(points) == 5
    gens = [study._storage.get_trial_system_attrs(t._trial_id)[GEN_ATTR] for t in running]
    assert gens == [[1, 0]] * 5
    # As soon as 3 of them are complete, generation 0 is told and new asks are generation 1,
    # while the other two are still running.
    for t in running[:3]:
        study.tell(t, evo.transform_values([_loss(t.params)], t.params))
    nxt = study.ask(dists)
    assert study._storage.get_trial_system_attrs(nxt._trial_id)[GEN_ATTR] == [1, 1]
