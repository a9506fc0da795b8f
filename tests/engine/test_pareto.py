"""Pareto fronts: front extraction, exact hypervolume, preference picks, the tracker."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mergesweep.errors import ConfigError
from mergesweep.pareto import (
    HypervolumeTracker,
    hypervolume,
    nondominated,
    parse_prefer,
    prefer_index,
    preference_weights,
)

MAX2 = ["maximize", "maximize"]


def test_front_extraction_keeps_exactly_the_non_dominated_rows() -> None:
    pts = np.array([[0.9, 0.2], [0.5, 0.5], [0.4, 0.4], [0.5, 0.5], [0.1, 0.9], [0.1, 0.8]])
    assert nondominated(pts, MAX2).tolist() == [True, True, False, True, True, False]
    # Mixed directions: the second column is a loss.
    mixed = np.array([[0.9, 2.0], [0.8, 1.0], [0.7, 1.5]])
    assert nondominated(mixed, ["maximize", "minimize"]).tolist() == [True, True, False]
    assert nondominated(np.zeros((0, 2)), MAX2).tolist() == []


def test_hypervolume_against_hand_computed_cases() -> None:
    # Rectangles 0.9×0.2 and 0.5×0.5 overlap in 0.5×0.2: 0.18 + 0.25 − 0.10.
    pts = [[0.9, 0.2], [0.5, 0.5], [0.4, 0.4]]
    assert hypervolume(pts, [0.0, 0.0], MAX2) == pytest.approx(0.33)
    # 3-D losses, reference (4, 4, 4): boxes 3·3·1 = 9 and 2·2·3 = 12 overlap in 2·2·1 = 4.
    loss = [[1, 1, 3], [2, 2, 1], [3, 3, 3]]
    assert hypervolume(loss, [4, 4, 4], ["minimize"] * 3) == pytest.approx(17.0)
    # A fourth objective where both points sit 1 below the reference multiplies by 1.
    loss4 = [[1, 1, 3, 1], [2, 2, 1, 1]]
    assert hypervolume(loss4, [4, 4, 4, 2], ["minimize"] * 4) == pytest.approx(17.0)
    # Points no better than the reference in some objective add nothing.
    assert hypervolume([[0.5, 0.1]], [0.0, 0.2], MAX2) == 0.0
    assert hypervolume(np.zeros((0, 2)), [0.0, 0.0], MAX2) == 0.0


def test_hypervolume_matches_a_monte_carlo_estimate_in_3d() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(size=(12, 3))
    exact = hypervolume(pts, [0, 0, 0], ["maximize"] * 3)
    probe = rng.uniform(size=(200_000, 3))
    covered = np.any(np.all(probe[:, None, :] <= pts[None, :, :], axis=2), axis=1)
    assert exact == pytest.approx(covered.mean(), abs=0.01)


def test_preference_pick_maximises_the_normalised_weighted_sum() -> None:
    # Column 0 spans 0.2..1.0, column 1 (a loss) spans 1..3: normalised goodness
    # rows: (1, 0), (0.5, 0.5), (0, 1).
    vals = np.array([[1.0, 3.0], [0.6, 2.0], [0.2, 1.0]])
    dirs = ["maximize", "minimize"]
    assert prefer_index(vals, dirs, [1.0, 0.0]) == 0
    assert prefer_index(vals, dirs, [0.0, 1.0]) == 2
    assert prefer_index(vals, dirs, [1.0, 1.2]) == 2
    assert prefer_index(vals, dirs, [1.2, 1.0]) == 0
    w = preference_weights({"a": 3.0, "b": 4.0}, ["a", "b"])
    assert w.tolist() == pytest.approx([0.6, 0.8])


def test_parse_prefer_and_its_errors() -> None:
    assert parse_prefer("topic=2, langid=1", ["topic", "langid", "x"]) == {
        "topic": 2.0,
        "langid": 1.0,
    }
    with pytest.raises(ConfigError, match=r"--prefer: unknown task 'nope'; tasks: a, b"):
        parse_prefer("nope=1", ["a", "b"])
    with pytest.raises(ConfigError, match=r"--prefer: 'a' is not TASK=WEIGHT"):
        parse_prefer("a", ["a", "b"])
    with pytest.raises(ConfigError, match=r"--prefer: weight 'x' of 'a' is not a number"):
        parse_prefer("a=x", ["a", "b"])
    with pytest.raises(ConfigError, match=r"--prefer: give non-negative weights"):
        parse_prefer("a=0,b=0", ["a", "b"])


def test_tracker_equals_the_hypervolume_of_everything_so_far() -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(size=(15, 2))
    tracker = HypervolumeTracker(MAX2, [0.1, 0.1], "base")
    for i in range(len(pts)):
        assert tracker.add(pts[i]) == pytest.approx(hypervolume(pts[: i + 1], [0.1, 0.1], MAX2))
    # Without a reference, the running worst scores are the reference.
    worst = HypervolumeTracker(MAX2, None, "worst")
    hv = [worst.add(p) for p in pts[:5]]
    assert hv[0] == 0.0
    assert hv[-1] == pytest.approx(hypervolume(pts[:5], pts[:5].min(axis=0), MAX2))


def test_hypervolume_is_order_free() -> None:
    pts = np.random.default_rng(2).uniform(size=(6, 3))
    ref = [0.0, 0.0, 0.0]
    hv = {
        round(hypervolume(pts[list(p)], ref, ["maximize"] * 3), 12)
        for p in itertools.islice(itertools.permutations(range(6)), 20)
    }
    assert len(hv) == 1


def test_nsga2_and_a_full_grid_on_a_pareto_study(make_config) -> None:
    import optuna

    import mergesweep
    from mergesweep.fronts import evaluated_front
    from mergesweep.pareto import PARETO_ATTR, study_hypervolume
    from mergesweep.storage import open_storage

    tasks = {
        t: {"kind": "accuracy", "data": spec["data"], "samples": 50}
        for t, spec in make_config()["objectives"]["tasks"].items()
        if t in ("low", "high")
    }
    base = make_config(objectives={"mode": "pareto", "tasks": tasks})
    base["pool"]["experts"] = {t: base["pool"]["experts"][t] for t in tasks}
    cfg = {
        **base,
        "name": "nsga",
        "searcher": {"name": "nsga2", "options": {"population_size": 4}},
        "budget": {"trials": 6},
    }
    assert mergesweep.run(cfg).complete == 6
    study = optuna.load_study(study_name="nsga", storage=open_storage(cfg["storage"]))
    assert study.metric_names == ["low", "high"]
    hv = [t.user_attrs["hypervolume"] for t in study.trials]
    assert hv == sorted(hv)  # the front only grows
    ref = study.user_attrs[PARETO_ATTR]["reference"]
    assert study_hypervolume(study) == (pytest.approx(hv[-1]), ref, "base")
    front = {r["number"] for r in evaluated_front(study)}
    assert front == {t.number for t in study.best_trials}
    # A grid smaller than the budget stops at its size (no study.stop() outside optimize).
    grid = {**base, "name": "grid", "searcher": {"name": "grid", "options": {"points": 2}}}
    grid["budget"] = {"trials": 10}
    assert mergesweep.run(grid).complete == 4
