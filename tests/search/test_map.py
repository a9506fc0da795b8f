"""MAP: the design, its sampler (order, parallel workers, resume), Bayesian points, and the
searchers end to end on a 2-expert digits pool (predicted front, R², show --prefer)."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from click.testing import CliRunner

from mergesweep.errors import ConfigError
from mergesweep.pareto import nondominated
from mergesweep.pool import PoolLayout
from mergesweep.search import SearchContext, build_searcher, distributions
from mergesweep.search.map import design_points, residual_point
from mergesweep.search.surrogate import Quadratic
from mergesweep.spaces import build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _layout(n: int) -> PoolLayout:
    experts = tuple("abcdefgh"[:n])
    return PoolLayout(experts=experts, names=("enc.w",), shapes=((4,),), fingerprint="x")


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_design_has_onehots_isotropic_points_and_grid(dim: int) -> None:
    pts = design_points(dim)
    assert pts.shape == ((dim + 1) * (dim + 2), dim)
    assert len({tuple(p) for p in pts}) == len(pts)  # distinct
    assert ((pts >= 0) & (pts <= 1)).all()
    assert np.array_equal(pts[:dim], np.eye(dim))
    if dim > 1:
        iso = pts[dim:][np.all(pts[dim:] == pts[dim:, :1], axis=1)]
        assert len(iso) >= 2 and iso.max() == 1.0
    assert np.array_equal(design_points(dim, seed=3), design_points(dim, seed=3))


def _study(name: str, storage: str, searcher: str, n: int, opts=None):
    space = build_space("modelwise", _layout(n), {"low": 0.0, "high": 2.0})
    s = build_searcher(searcher, opts)
    ctx = SearchContext(space, 0, ["maximize", "maximize"], budget=100)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=["maximize", "maximize"],
        sampler=s.sampler(ctx),
        load_if_exists=True,
    )
    return space, s, study


def _scores(u: np.ndarray) -> list[float]:
    return [
        float(1 - (u[0] - 0.8) ** 2 - 0.3 * u[1] ** 2),
        float(1 - (u[1] - 0.6) ** 2 - u[0] ** 2),
    ]


def test_sampler_walks_the_design_skips_held_points_and_resumes(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    space, s, study = _study("m", storage, "map", 2)
    dists = distributions(space)
    design = design_points(2) * 2.0  # mapped to [low, high] = [0, 2]
    # Two workers in flight get two distinct points (a running trial holds its point).
    t0, t1 = study.ask(dists), study.ask(dists)
    assert [t0.params["lambda.a"], t0.params["lambda.b"]] == design[0].tolist()
    assert [t1.params["lambda.a"], t1.params["lambda.b"]] == design[1].tolist()
    study.tell(t0, _scores(design[0] / 2))
    study.tell(t1, state=optuna.trial.TrialState.FAIL)  # a failed point is proposed again
    t2 = study.ask(dists)
    assert [t2.params["lambda.a"], t2.params["lambda.b"]] == design[1].tolist()
    study.tell(t2, _scores(design[1] / 2))
    # A fresh sampler over the same storage (resume) carries on with the next point.
    _, _, again = _study("m", storage, "map", 2)
    t3 = again.ask(dists)
    assert [t3.params["lambda.a"], t3.params["lambda.b"]] == design[2].tolist()
    assert s.max_trials(space) == 12


def test_residual_point_goes_where_the_surrogate_misfits() -> None:
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(40, 2))
    y = np.zeros(40)
    model = Quadratic(np.zeros(6), "identity")
    # Residuals only for points at angles below π/8 (close to the c1 axis).
    phi = np.arctan2(u[:, 1], u[:, 0])
    y[phi < np.pi / 8] = 1.0
    picks = np.array([residual_point(u, y, model, rng) for _ in range(30)])
    radius = np.linalg.norm(picks, axis=1)
    assert ((radius >= 0.2 - 1e-12) & (radius <= 0.8 + 1e-12)).all()
    assert (np.arctan2(picks[:, 1], picks[:, 0]) < np.pi / 8).mean() > 0.9


def test_bayesian_map_adds_points_after_its_initial_design(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    space, s, study = _study("b", storage, "map_bayesian", 2, {"initial_points": 9})
    dists = distributions(space)
    assert s.max_trials(space) == 12
    design = design_points(2)[:9] * 2.0
    for i in range(12):
        t = study.ask(dists)
        u = np.array([t.params["lambda.a"], t.params["lambda.b"]]) / 2.0
        if i < 9:
            assert (u * 2.0).tolist() == design[i].tolist()
        else:  # residual-directed: inside the radius range of the positive orthant
            assert 0.2 - 1e-9 <= np.linalg.norm(u) <= 0.8 + 1e-9
        study.tell(t, _scores(u))
    with pytest.raises(ConfigError, match=r"searcher\.options\.initial_points: 5 cannot fit"):
        build_searcher("map_bayesian", {"initial_points": 5}).max_trials(space)


def _digits(zoo, tmp_path, searcher: dict, **extra) -> dict:
    tasks = ("low", "high")
    cfg = {
        "name": searcher["name"],
        "storage": f"sqlite:///{tmp_path / 'studies.db'}",
        "pool": {
            "base": str(zoo / "base"),
            "experts": {t: str(zoo / "experts" / t) for t in tasks},
            "include": [r"vit\..*"],
        },
        "space": {"kind": "modelwise"},
        "objectives": {
            "mode": "pareto",
            "tasks": {
                t: {"kind": "accuracy", "data": str(zoo / "data" / t), "samples": 60} for t in tasks
            },
        },
        "searcher": searcher,
        "budget": {"trials": 100},
        "executor": {"kind": "inline"},
    }
    cfg.update(extra)
    return cfg


def test_map_end_to_end_on_two_experts(digits_zoo, tmp_path) -> None:
    import mergesweep
    from mergesweep.cli import main
    from mergesweep.storage import open_storage

    cfg = _digits(digits_zoo, tmp_path, {"name": "map"})
    summary = mergesweep.run(cfg)
    assert summary.complete == 12  # the design caps the budget
    study = optuna.load_study(study_name="map", storage=open_storage(cfg["storage"]))
    record = study.user_attrs["map"]
    assert record["tasks"] == ["low", "high"] and record["evaluations"] == 12
    assert all(r is not None and r > 0.3 for r in record["r2"].values())
    front = np.array([[f["predicted"]["low"], f["predicted"]["high"]] for f in record["front"]])
    assert len(front) >= 20 and nondominated(front, ["maximize"] * 2).all()
    # The predicted extremes are near the experts' own (evaluated) scores.
    onehot = {tuple(t.params.values()): t.values for t in study.trials}
    assert front[:, 0].max() == pytest.approx(onehot[(1.0, 0.0)][0], abs=0.15)
    assert front[:, 1].max() == pytest.approx(onehot[(0.0, 1.0)][1], abs=0.15)
    # Hypervolume after every trial, against the base model's scores, never decreasing.
    hv = [t.user_attrs["hypervolume"] for t in study.trials]
    assert hv == sorted(hv) and hv[-1] > 0
    assert study.user_attrs["mergesweep_pareto"]["source"] == "base"
    runner = CliRunner()
    args = ["show", "map", "--storage", cfg["storage"]]
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "MAP predicted front" in out.output and "hypervolume" in out.output
    picked = runner.invoke(main, [*args, "--prefer", "low=0,high=1", "--evaluate", "--json"])
    assert picked.exit_code == 0, picked.output
    pick = json.loads(picked.output)
    assert pick["source"] == "predicted"
    assert pick["scores"]["high"] == pytest.approx(front[:, 1].max())
    assert pick["evaluated"]["metrics"]["high"] > 0.5
    assert len(study.trials) == 13
    bad = runner.invoke(main, [*args, "--prefer", "nope=1"])
    assert bad.exit_code == 2 and "--prefer: unknown task 'nope'" in bad.output


def test_nested_map_merges_pairs_and_stores_the_last_front(digits_zoo, tmp_path) -> None:
    import mergesweep
    from mergesweep.storage import open_storage

    cfg = _digits(digits_zoo, tmp_path, {"name": "map_nested", "options": {"points": 7}})
    summary = mergesweep.run(cfg)
    # 2 one-hots + 7 design points (the corners are the one-hots) + the pick.
    assert 7 <= summary.complete <= 10
    study = optuna.load_study(study_name="map_nested", storage=open_storage(cfg["storage"]))
    (merge,) = study.user_attrs["map_nested"]["merges"]
    assert sorted(merge["pair"]) == ["high", "low"] and merge["trial"] is not None
    assert study.user_attrs["map"]["tasks"] == sorted(merge["tasks"], key=merge["tasks"].index)
    again = mergesweep.run(cfg)  # resume: every point is found, nothing runs again
    assert again.complete == summary.complete
