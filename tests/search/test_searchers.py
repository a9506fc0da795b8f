"""One conformance suite every registered searcher passes, on a cheap synthetic objective."""

from __future__ import annotations

import optuna
import pytest

from mergesweep.errors import ConfigError, UnknownNameError
from mergesweep.pool import PoolLayout
from mergesweep.search import SEARCHERS, SearchContext, build_searcher, distributions
from mergesweep.spaces import build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAYOUT = PoolLayout(
    experts=("a", "b"),
    names=("enc.layers.0.w", "enc.layers.1.w"),
    shapes=((4,), (4,)),
    fingerprint="x",
)
OPTIONS = {"grid": {"points": 4}, "gp": {"n_startup_trials": 4}, "tpe": {"n_startup_trials": 4}}


def _score(params: dict[str, float]) -> float:
    # Peak at λ_a = 0.7, λ_b = 0.2.
    return -((params["lambda.a"] - 0.7) ** 2) - (params["lambda.b"] - 0.2) ** 2


def _run(name: str, storage, n: int, seed: int = 0, study_name: str = "s") -> optuna.Study:
    space = build_space("modelwise", LAYOUT, {})
    searcher = build_searcher(name, OPTIONS.get(name))
    ctx = SearchContext(space, seed, ["maximize"], budget=n)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize",
        sampler=searcher.sampler(ctx),
        load_if_exists=True,
    )
    dists = distributions(space)
    for _ in range(n):
        trial = study.ask(dists)
        study.tell(trial, _score(trial.params))
    return study


@pytest.mark.parametrize("name", SEARCHERS.names())
def test_searcher_conformance(name: str, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = _run(name, storage, 8)
    trials = study.get_trials()
    assert len(trials) == 8
    for t in trials:  # every point lies in the space
        assert set(t.params) == {"lambda.a", "lambda.b"}
        assert all(0.0 <= v <= 1.0 for v in t.params.values())
    # Seeded: a second study with the same seed proposes the same first points.
    again = _run(name, f"sqlite:///{tmp_path / 'db2.sqlite'}", 3)
    assert [t.params for t in again.get_trials()] == [t.params for t in trials[:3]]
    # Resumable: a sampler rebuilt over the stored study carries on.
    resumed = _run(name, storage, 4)
    assert len(resumed.get_trials()) == 12
    assert resumed.best_value >= max(t.value for t in trials)


def test_model_based_searchers_beat_their_first_points(tmp_path) -> None:
    for name in ("tpe", "gp", "cmaes"):
        study = _run(name, f"sqlite:///{tmp_path / name}.db", 20)
        first = max(t.value for t in study.get_trials()[:5])
        assert study.best_value >= first, name
        assert study.best_value > -0.02, name  # within ~0.14 of the optimum


def test_grid_caps_trials_and_covers_corners() -> None:
    space = build_space("modelwise", LAYOUT, {})
    grid = build_searcher("grid", {"points": 3})
    assert grid.max_trials(space) == 9
    assert grid.grid(space)["lambda.a"] == [0.0, 0.5, 1.0]


def test_nsga2_population_fits_budget() -> None:
    assert build_searcher("nsga2").population(100) == 10
    assert build_searcher("nsga2").population(1000) == 24
    assert build_searcher("nsga2").population(30) == 8
    assert build_searcher("nsga2", {"population_size": 5}).population(100) == 5


def test_bad_searcher_input() -> None:
    with pytest.raises(UnknownNameError, match=r"searcher\.name: unknown searcher 'tpee'; choose"):
        build_searcher("tpee")
    with pytest.raises(ConfigError, match=r"searcher\.options: .*'popsiz'"):
        build_searcher("cmaes", {"popsiz": 3})
    with pytest.raises(ConfigError, match=r"searcher\.options\.points"):
        build_searcher("grid", {"points": 1})


def test_tpe_matches_optunas_without_pruning_and_sizes_its_good_group_by_complete_trials():
    """Without pruned trials mergesweep's TPE proposes exactly Optuna's points; with them its
    good group is 10% of the complete trials, where Optuna's would be 10% of all trials."""
    import optuna
    from optuna.trial import TrialState

    from mergesweep.search.base import SearchContext
    from mergesweep.search.samplers import TPE

    def objective(trial):
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return (x - 0.3) ** 2 + (y - 0.7) ** 2

    ctx = SearchContext(space=None, seed=3, directions=["minimize"], budget=25)
    ours = TPE(n_startup_trials=5).sampler(ctx)
    theirs = optuna.samplers.TPESampler(seed=3, n_startup_trials=5, multivariate=True)
    points = []
    for sampler in (ours, theirs):
        study = optuna.create_study(sampler=sampler)
        study.optimize(objective, n_trials=25)
        points.append([t.params for t in study.trials])
    assert points[0] == points[1]

    study = optuna.create_study(sampler=ours)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    trials = [
        optuna.trial.create_trial(params={"x": i / 100}, distributions=dist, value=float(i))
        for i in range(20)
    ] + [
        optuna.trial.create_trial(
            params={"x": 0.5},
            distributions=dist,
            state=TrialState.PRUNED,
            intermediate_values={0: 1.0},
        )
        for _ in range(180)
    ]
    study.add_trials(trials)
    study.ask()
    assert ours._count.complete == 20 and ours._count(200) == 2  # Optuna's: 20
    assert optuna.samplers._tpe.sampler.default_gamma(200) == 20
