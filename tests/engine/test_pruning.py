"""Multi-fidelity pruning on the digits zoo: nested rungs, pruned trials, budget, config errors."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

import mergesweep
from mergesweep.errors import ConfigError
from mergesweep.objectives import build_objective
from mergesweep.runtime import Job
from mergesweep.runtime.worker import Evaluator
from mergesweep.study import open_study

PRUNING = {"pruner": "median", "rungs": [0.25, 0.5], "startup_trials": 3}


def _trials(cfg: dict) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=cfg["name"], storage=cfg["storage"]).trials


def test_rung_prefixes_are_nested_and_the_full_prefix_is_the_subset(digits_zoo) -> None:
    obj = build_objective("low", {"kind": "accuracy", "data": str(digits_zoo / "data" / "low")})
    obj.setup(None, seed=0)
    assert sorted(obj.order.tolist()) == obj.indices.tolist()  # same examples, seeded order
    assert obj.order.tolist() != obj.indices.tolist()  # a prefix is a random sample
    again = build_objective("low", {"kind": "accuracy", "data": str(digits_zoo / "data" / "low")})
    again.setup(None, seed=0)
    assert again.order.tolist() == obj.order.tolist()  # same prefix in every worker


def test_rung_ranges_add_up_to_the_prefix_means(make_config) -> None:
    setup = open_study(make_config())
    evaluator = Evaluator(setup.config, setup.layout)
    evaluator.method.apply(evaluator.pool, setup.space.to_plan(setup.space.init_point()))
    obj = evaluator.objectives["low"]
    model = evaluator.pool.model(evaluator.heads["low"])
    n = len(obj.order)
    parts = [obj.evaluate_range(model, a, b) for a, b in ((0, 0.1), (0.1, 0.3), (0.3, 1.0))]
    a, b = math.ceil(0.1 * n), math.ceil(0.3 * n)
    assert [c for _, c in parts] == [a, b - a, n - b]
    total = sum(s for s, _ in parts)
    assert total / n == pytest.approx(obj.evaluate(model), rel=1e-6)  # each example once
    assert (parts[0][0] + parts[1][0]) / (parts[0][1] + parts[1][1]) == pytest.approx(
        obj.evaluate_prefix(model, 0.3), rel=1e-6
    )


def test_sweep_prunes_and_completes_on_the_full_subset(make_config) -> None:
    cfg = make_config(budget__trials=16, searcher__name="tpe", pruning=PRUNING)
    summary = mergesweep.run(cfg)
    trials = _trials(cfg)
    states = [t.state for t in trials]
    assert len(trials) == 16 and TrialState.FAIL not in states  # pruned count toward the budget
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    setup = open_study({**cfg, "name": "plain", "pruning": {"pruner": "none"}})
    evaluator = Evaluator(setup.config, setup.layout)
    sizes = {task: len(obj.order) for task, obj in evaluator.objectives.items()}
    assert pruned and summary.pruned == len(pruned) and summary.complete == len(complete)
    for t in pruned:
        assert t.user_attrs["rungs"][-1]["rung"] == max(t.intermediate_values)
        assert t.values[0] == t.intermediate_values[max(t.intermediate_values)]
    for t in complete:
        assert sorted(t.intermediate_values) == [0, 1]
        assert [r["fraction"] for r in t.user_attrs["rungs"]] == [0.25, 0.5, 1.0]
        # A climbing trial scores each example once: its rungs' examples are the subsets.
        for task, n in sizes.items():
            assert sum(r["examples"][task] for r in t.user_attrs["rungs"]) == n
        timings = t.user_attrs["timings"]
        assert timings["eval_s"] == pytest.approx(sum(timings[f"eval_s_rung{k}"] for k in range(3)))
    # A complete trial's metrics are those of a plain evaluation of its point on the full subset.
    best = max(complete, key=lambda t: t.values[0])
    result = evaluator.evaluate(Job(0, setup.space.to_plan(best.params)))
    assert result.metrics == pytest.approx(best.user_attrs["metrics"])


def test_resume_with_pruning_reaches_the_budget(make_config) -> None:
    cfg = make_config(budget__trials=8, pruning=PRUNING)
    mergesweep.run(cfg)
    summary = mergesweep.resume(cfg["name"], cfg["storage"], ["budget.trials=12"])
    finished = [t for t in _trials(cfg) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert len(finished) == 12 and summary.complete == len(complete)  # complete: the study's
    assert 0 < summary.pruned <= 4  # pruned: this run's


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"pruning": {"pruner": "median", "rungs": []}}, r"pruning\.rungs: at least one"),
        ({"pruning": {"pruner": "median", "rungs": [0.5, 0.25]}}, r"pruning\.rungs\[1\]"),
        ({"pruning": {"pruner": "median", "rungs": [1.0]}}, r"pruning\.rungs\[0\]"),
        ({"pruning": {"pruner": "fast"}}, r"pruning\.pruner: 'fast' is not allowed"),
        ({"pruning": {"pruner": "halving", "reduction": 1}}, r"pruning\.reduction"),
        ({"pruning": {"pruner": "halving", "reduction": 3, "window": 2}}, r"pruning\.window"),
        ({"pruning": {"pruner": "median"}, "objectives__mode": "pareto"}, r"pareto"),
        ({"pruning": {"pruner": "median"}, "searcher__name": "adamerging"}, r"own loop"),
    ],
)
def test_pruning_config_errors_name_the_key(make_config, changes, match) -> None:
    with pytest.raises(ConfigError, match=match):
        mergesweep.run(make_config(**changes))


def test_best_pruner_compares_a_rung_with_the_best_trials_same_rung() -> None:
    """The best complete trial scored 0.90 on the rung's examples and 0.80 on the whole subset:
    a rung value of 0.87 trails it on the same examples (pruned at margin 0.02, kept at 0.05),
    though it is far above its final 0.80."""
    from mergesweep.pruning import BestPruner

    for direction, sign in (("maximize", 1.0), ("minimize", -1.0)):
        study = optuna.create_study(direction=direction)
        dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
        best = optuna.trial.create_trial(
            params={"x": 0.5},
            distributions=dist,
            value=sign * 0.80,
            intermediate_values={0: sign * 0.90},
        )
        old = optuna.trial.create_trial(params={"x": 0.1}, distributions=dist, value=sign * 0.5)
        study.add_trials([best, old])
        running = optuna.trial.create_trial(
            params={"x": 0.7},
            distributions=dist,
            state=TrialState.RUNNING,
            intermediate_values={0: sign * 0.87},
        )
        assert BestPruner(margin=0.02, startup_trials=2).prune(study, running)
        assert not BestPruner(margin=0.05, startup_trials=2).prune(study, running)
        assert not BestPruner(margin=0.02, startup_trials=3).prune(study, running)  # startup
        # A best trial without the rung's value is compared by its final value.
        study2 = optuna.create_study(direction=direction)
        study2.add_trials(
            [optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=sign * 0.80)]
        )
        assert not BestPruner(margin=0.02, startup_trials=1).prune(study2, running)


def test_halving_window_ranks_against_the_latest_trials_only() -> None:
    """Seventeen trials reached rung 0: twelve early poor ones (0.10-0.32) and five recent good
    ones (0.80-0.90). A trial at 0.78 is in the best third of all eighteen (6th) but not of
    the last six (the five good ones and itself)."""
    from mergesweep.pruning import HalvingPruner

    for direction, sign in (("maximize", 1.0), ("minimize", -1.0)):
        study = optuna.create_study(direction=direction)
        dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
        rung = [0.10 + 0.02 * k for k in range(12)] + [0.80, 0.84, 0.86, 0.88, 0.90]
        study.add_trials(
            [
                optuna.trial.create_trial(
                    params={"x": v},
                    distributions=dist,
                    value=sign * v,
                    intermediate_values={0: sign * v},
                )
                for v in rung
            ]
        )
        new, top = (
            optuna.trial.create_trial(
                params={"x": 0.5},
                distributions=dist,
                state=TrialState.RUNNING,
                intermediate_values={0: sign * v},
            )
            for v in (0.78, 0.89)
        )
        new.number = top.number = len(rung)
        assert not HalvingPruner(reduction=3, startup_trials=5).prune(study, new)
        assert HalvingPruner(reduction=3, startup_trials=5, window=6).prune(study, new)
        assert not HalvingPruner(reduction=3, startup_trials=5, window=6).prune(study, top)
