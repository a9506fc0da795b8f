"""Multi-fidelity pruning on the digits zoo: nested rungs, pruned trials, budget, config errors."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

import mergesweep
from mergesweep.errors import ConfigError, ObjectiveError
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
        ({"pruning": {"pruner": "paired", "confidence": 1.0}}, r"pruning\.confidence"),
        ({"pruning": {"pruner": "paired"}, "objectives__mode": "min"}, r"'paired' sums"),
        ({"pruning": {"pruner": "median", "order": "contentious"}}, r"pruning\.order"),
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


def test_paired_gap_predicts_the_full_subset_difference_from_a_prefix() -> None:
    """One task of 100 examples (the best trial right on 80); a trial scored on the first 20
    agrees with it but for 3 examples the best gets right. Mean gap −0.15; s² shrunk with two
    pseudo-examples of the best's own variance 0.16: (2.55 + 0.32) / 21; sd² = s² · 80 / 2000."""
    from mergesweep.pruning import paired_gap

    ref = [1.0] * 16 + [0.0] * 4 + [1.0] * 64 + [0.0] * 16
    own = [0.0] * 3 + [1.0] * 13 + [0.0] * 4
    mean, sd = paired_gap({"t": own}, {"t": ref}, {"t": 1.0})
    assert mean == pytest.approx(-0.15)
    assert sd == pytest.approx(math.sqrt(2.87 / 21 * 80 / 2000))
    # Minimizing (a loss): the same numbers read the other way round.
    assert paired_gap({"t": own}, {"t": ref}, {"t": 1.0}, sign=-1.0) == pytest.approx((0.15, sd))
    # Agreeing everywhere: no gap; the whole subset seen: no uncertainty left.
    assert paired_gap({"t": ref[:20]}, {"t": ref}, {"t": 1.0})[0] == 0.0
    assert paired_gap({"t": ref}, {"t": ref}, {"t": 1.0}) == (0.0, 0.0)
    # Two tasks weighted 3:1 add up; the agreeing one keeps its prior's variance.
    both = paired_gap({"a": own, "b": ref[:20]}, {"a": ref, "b": ref}, {"a": 0.75, "b": 0.25})
    prior = 2 * 0.16 / 21 * 80 / 2000
    assert both == pytest.approx((0.75 * -0.15, math.sqrt(0.75**2 * sd**2 + 0.25**2 * prior)))


def test_paired_pruner_prunes_only_a_confident_gap_to_the_best() -> None:
    """The gap above (−0.15 ± 0.074) is pruned at confidence 0.9 (z 1.28) but not at 0.99
    (z 2.33); the best's examples come from its stored user attr (a resumed study)."""
    from mergesweep.pruning import EXAMPLES_ATTR, PairedPruner

    ref = [1.0] * 16 + [0.0] * 4 + [1.0] * 64 + [0.0] * 16
    own = [0.0] * 3 + [1.0] * 13 + [0.0] * 4
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": 0.5}, distributions=dist, value=0.8, user_attrs={EXAMPLES_ATTR: e}
            )
            for e in ({"t": ref}, {"t": [0.0] * 100})
        ]
    )
    running = optuna.trial.create_trial(
        params={"x": 0.7},
        distributions=dist,
        state=TrialState.RUNNING,
        intermediate_values={0: 0.65},
    )
    running.number = 2
    for confidence, pruned in ((0.9, True), (0.99, False)):
        pruner = PairedPruner({"t": 1.0}, confidence, startup_trials=2)
        assert not pruner.prune(study, running)  # nothing noted for the trial yet
        pruner.note(2, {"t": own})
        assert pruner.prune(study, running) is pruned
        early = PairedPruner({"t": 1.0}, confidence, startup_trials=3)
        early.note(2, {"t": own})
        assert not early.prune(study, running)  # two complete trials: still in the startup
    # The best trial tied with another one, which has the examples: still the first one (0.8).
    pruner = PairedPruner({"t": 1.0}, 0.9, startup_trials=1)
    pruner.note(2, {"t": ref[:20]})
    assert not pruner.prune(study, running)


def _paired_sweep(make_config, **options):
    """A 16-trial TPE sweep with the paired pruner; its trials and a worker of the same pool
    (a study without pruning) to score them again."""
    pruning = {"pruner": "paired", "rungs": [0.25, 0.5], "startup_trials": 3, **options}
    cfg = make_config(budget__trials=16, searcher__name="tpe", pruning=pruning)
    summary = mergesweep.run(cfg)
    trials = _trials(cfg)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(pruned) + len(complete) == 16 and pruned and summary.pruned == len(pruned)
    setup = open_study({**cfg, "name": "plain", "pruning": {"pruner": "none"}})
    return trials, pruned, complete, setup, Evaluator(setup.config, setup.layout)


def test_paired_pruning_sweep_stores_every_example_of_complete_trials(make_config) -> None:
    _, pruned, complete, setup, evaluator = _paired_sweep(make_config)
    sizes = {task: len(obj.order) for task, obj in evaluator.objectives.items()}
    for t in complete:  # every example once, in the fixed order; their mean is the metric
        examples = t.user_attrs["examples"]
        assert {task: len(v) for task, v in examples.items()} == sizes
        for task, values in examples.items():
            assert sum(values) / len(values) == pytest.approx(t.user_attrs["metrics"][task])
    best = max(complete, key=lambda t: t.values[0])
    result = evaluator.evaluate(Job(0, setup.space.to_plan(best.params), examples=True))
    for task, values in best.user_attrs["examples"].items():
        assert result.examples[task] == pytest.approx(values)
    assert result.metrics == pytest.approx(best.user_attrs["metrics"])
    # Pruned trials trail the best complete trial of their time: on their rungs' examples,
    # their mean is below the final best's on the same examples.
    final = best.user_attrs["examples"]
    for t in pruned:
        seen = {task: sum(r["examples"][task] for r in t.user_attrs["rungs"]) for task in sizes}
        ref = sum(sum(final[task][: seen[task]]) / seen[task] for task in sizes) / len(sizes)
        assert t.values[0] < ref


def test_positions_score_the_same_examples_as_the_fixed_order(make_config) -> None:
    """Any positions, in any order and across batches, give each example's own metric."""
    setup = open_study(make_config())
    evaluator = Evaluator(setup.config, setup.layout)
    evaluator.method.apply(evaluator.pool, setup.space.to_plan(setup.space.init_point()))
    obj = evaluator.objectives["low"]
    obj.batch_size = 16  # several batches of the prebuilt ones in one call
    obj.setup(evaluator.pool, setup.cfg.seed)
    model = evaluator.pool.model(evaluator.heads["low"])
    every = obj.evaluate_examples(model, 0.0, 1.0)
    n = len(every)
    positions = [n - 1, 3, 40, 17, 0, 16, 33]
    values = obj.evaluate_positions(model, positions)
    assert values.tolist() == pytest.approx(every[positions].tolist())
    assert obj.evaluate_positions(model, []).numel() == 0
    with pytest.raises(ObjectiveError, match="distinct"):
        obj.evaluate_positions(model, [1, 1])
    plan = setup.space.to_plan(setup.space.init_point())
    result = evaluator.evaluate(
        Job(0, plan, examples=True, positions={t: [2, 0] for t in evaluator.objectives})
    )
    assert result.counts == dict.fromkeys(evaluator.objectives, 2)
    assert result.examples["low"] == pytest.approx(every[[2, 0]].tolist())


def test_contention_and_ordered_gap_by_hand() -> None:
    """``contention``: mean squared difference to the best, shrunk with two pseudo-trials of
    the task's mean. ``ordered_gap``: the seen examples exactly, the unseen ones' variance
    scaled by the trial's observed over expected disagreement on the seen ones."""
    from mergesweep.pruning import contention, ordered_gap

    v = contention({"t": [1, 1, 0]}, [{"t": [0, 1, 0]}, {"t": [1, 1, 1]}], ["t"])["t"]
    third = 2 / 3  # two pseudo-trials of the mean 1/3
    assert v.tolist() == pytest.approx([(1 + third) / 4, third / 4, (1 + third) / 4])
    ref = [1.0] * 8 + [0.0] * 2
    var = [0.5, 0.5, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    own, pos = [0.0, 1.0, 1.0], [0, 1, 2]  # wrong where the best is right, on position 0
    mean, sd = ordered_gap({"t": own}, {"t": pos}, {"t": ref}, {"t": var}, {"t": 1.0})
    prior = 2 * 0.12
    assert mean == pytest.approx(-0.1)
    assert sd == pytest.approx(math.sqrt((1 + prior) / (1.1 + prior) * 0.1 / 100))
    # Minimizing reads the difference the other way; every example seen: no uncertainty.
    flipped = ordered_gap({"t": own}, {"t": pos}, {"t": ref}, {"t": var}, {"t": 1.0}, -1.0)
    assert flipped == pytest.approx((0.1, sd))
    whole = ordered_gap({"t": ref[::-1]}, {"t": range(9, -1, -1)}, {"t": ref}, {"t": var}, {"t": 1})
    assert whole == (0.0, 0.0)
    # Agreeing on the contentious examples: a smaller spread than disagreeing on them.
    agree = ordered_gap({"t": ref[:3]}, {"t": pos}, {"t": ref}, {"t": var}, {"t": 1.0})
    assert agree[0] == 0.0 and agree[1] < sd


def test_paired_pruner_orders_examples_by_contention() -> None:
    """The order puts first the examples the other complete trials disagreed on with the
    best; a trial scored there and trailing the best is pruned with fewer examples seen."""
    from mergesweep.pruning import EXAMPLES_ATTR, PairedPruner

    best = [1.0] * 90 + [0.0] * 10
    near = list(best)
    for i in (95, 96, 40):
        near[i] = 1.0 - near[i]
    far = list(best)
    for i in (95, 40, 7):
        far[i] = 1.0 - far[i]
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": 0.5}, distributions=dist, value=v, user_attrs={EXAMPLES_ATTR: e}
            )
            for v, e in ((0.9, {"t": best}), (0.89, {"t": near}), (0.88, {"t": far}))
        ]
    )
    pruner = PairedPruner({"t": 1.0}, 0.9, startup_trials=3)
    order = pruner.order(study)["t"]
    assert order[:2].tolist() == [40, 95]  # both disagreed there
    assert sorted(order[2:4].tolist()) == [7, 96]  # one trial each
    assert sorted(order.tolist()) == list(range(100))
    running = optuna.trial.create_trial(
        params={"x": 0.7}, distributions=dist, state=TrialState.RUNNING, intermediate_values={0: 0}
    )
    running.number = 3
    # Wrong on the four contentious examples where the best is right, of the ten seen.
    seen = order[:10]
    own = [0.0 if best[i] == 1.0 and k < 4 else best[i] for k, i in enumerate(seen)]
    pruner.note(3, {"t": own}, {"t": seen})
    assert pruner.prune(study, running)
    pruner.note(3, {"t": [best[i] for i in seen]}, {"t": seen})  # agreeing: not pruned
    assert not pruner.prune(study, running)
    assert PairedPruner({"t": 1.0}, 0.9, startup_trials=4).order(study) is None  # startup


def test_contentious_sweep_scores_new_trials_on_their_own_order(make_config) -> None:
    trials, _, complete, setup, evaluator = _paired_sweep(make_config, order="contentious")
    orders = [t.user_attrs["rungs"][0]["order"] for t in trials]
    assert orders[:3] == ["seeded"] * 3 and set(orders[3:]) == {"contentious"}
    for t in complete[3:]:  # scored in their own order, stored in the fixed one
        result = evaluator.evaluate(Job(0, setup.space.to_plan(t.params), examples=True))
        for task, values in t.user_attrs["examples"].items():
            assert values == pytest.approx(result.examples[task])
        assert t.user_attrs["metrics"] == pytest.approx(result.metrics)
        assert t.values[0] == pytest.approx(sum(result.metrics.values()) / len(result.metrics))
