"""``executor: tune``: real Ray Tune sweeps (local 2-CPU Ray, digits zoo, SQLite) and the public
trainable inside a user's own ``Tuner``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from rt_configs import TASKS, stored_trials, with_callable

from mergesweep import api
from mergesweep.cli import main
from mergesweep.driver import SweepError, study_values
from mergesweep.errors import ConfigError
from mergesweep.runtime import Job
from mergesweep.runtime.worker import Evaluator
from mergesweep.study import open_study

tune = pytest.importorskip("ray.tune")
from mergesweep.runtime.tune import (  # noqa: E402
    check_tune_searcher,
    make_trainable,
    run_tune_sweep,
    search_space,
    tune_objective,
)

pytestmark = pytest.mark.usefixtures("local_ray")


def _tune_config(make_config, **changes) -> dict:
    changes.setdefault("executor", {"kind": "tune", "workers": 2, "threads": 1})
    return make_config(**changes)


def _run(cfg: dict, tmp_path, *, create: bool = True, **kwargs):
    run_config = tune.RunConfig(storage_path=str(tmp_path / "ray_results"), verbose=0)
    setup = open_study(cfg, create=create)
    return run_tune_sweep(setup, progress=False, run_config=run_config, **kwargs)


def test_tune_sweep_stores_driver_records_and_resumes(make_config, tmp_path) -> None:
    cfg = _tune_config(make_config, name="tuned", budget__trials=6)
    summary = _run(cfg, tmp_path)
    assert (summary.complete, summary.failed) == (6, 0)
    trials = stored_trials(cfg)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    setup = open_study(cfg, create=False)
    for t in trials:
        assert set(t.user_attrs["metrics"]) == set(TASKS)
        timings = t.user_attrs["timings"]
        assert {"load_s", "merge_s", "eval_s", "overhead_s"} <= set(timings)
        assert timings["eval_s"] > 0 and timings["overhead_s"] >= 0
        assert t.user_attrs["plan"] and t.user_attrs["driver"]
        assert "@" in t.user_attrs["worker"]
        # values are the aggregated per-task metrics (mode: mean)
        assert t.values == pytest.approx(study_values(setup, t.user_attrs["metrics"], t.params))
        assert t.values[0] == pytest.approx(statistics.mean(t.user_attrs["metrics"].values()))
    # Tune reused each trial's actor: two workers, each loaded the pool once.
    cold = [t.user_attrs["tune"]["cold_start"] for t in trials]
    workers = {t.user_attrs["worker"] for t in trials}
    assert sum(cold) == len(workers) <= 2

    # The enqueued start point gives the numbers the inline driver gives, bit for bit.
    inline = make_config(name="inline", budget__trials=1, executor={"kind": "inline"})
    api.run(inline)
    (ref,) = stored_trials(inline)
    (init,) = [t for t in trials if t.user_attrs.get("enqueued")]
    assert init.params == ref.params
    assert init.user_attrs["metrics"] == ref.user_attrs["metrics"]
    assert init.values == ref.values

    out = CliRunner().invoke(main, ["show", "tuned", "--storage", cfg["storage"], "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert rows[0]["number"] == max(trials, key=lambda t: t.values[0]).number
    assert len(rows) == 6

    # Resume: the budget counts complete trials, so two more run.
    more = dict(cfg, budget={"trials": 8, "max_failures": 10})
    summary = _run(more, tmp_path, create=False)
    assert summary.complete == 8
    trials = stored_trials(cfg)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert len({t.user_attrs["driver"] for t in trials}) == 2  # six, then two more
    assert all("metrics" in t.user_attrs for t in trials[6:])


def test_failures_are_fail_with_their_reason(make_config, tmp_path, runtime_dir) -> None:
    """Call 0 of an objective raises, and call 0 of another hangs past the trial timeout."""
    cfg = _tune_config(
        make_config,
        name="tunefail",
        budget__trials=3,
        executor={"kind": "tune", "workers": 2, "threads": 1, "trial_timeout_s": 25},
    )
    cfg = with_callable(with_callable(cfg, "raise_once", "low"), "hang_once", "high")
    summary = _run(cfg, tmp_path)
    trials = stored_trials(cfg)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    reasons = sorted(t.user_attrs["fail_reason"] for t in by_state[TrialState.FAIL])
    assert summary.complete == len(by_state[TrialState.COMPLETE]) == 3
    assert not by_state[TrialState.RUNNING]
    assert summary.failed == 2 and len(reasons) == 2, reasons
    assert "objective low broke on call 0" in reasons[0]
    assert reasons[1] == "timeout after 25 s"
    for t in by_state[TrialState.FAIL]:
        assert t.values is None and "metrics" not in t.user_attrs
    for t in by_state[TrialState.COMPLETE]:
        assert t.user_attrs["metrics"]["low"] == 1.0 and t.values is not None


def test_too_many_failures_stop_the_sweep(make_config, tmp_path, runtime_dir) -> None:
    cfg = _tune_config(make_config, name="tunestop", budget={"trials": 4, "max_failures": 0})
    cfg = with_callable(cfg, "raise_once", "parity")
    with pytest.raises(SweepError, match=r"budget.max_failures: 1 trials failed.*parity broke"):
        _run(cfg, tmp_path)
    states = {t.state for t in stored_trials(cfg)}
    assert TrialState.RUNNING not in states and TrialState.FAIL in states


def test_searchers_with_their_own_loop_are_refused(make_config, tmp_path) -> None:
    cfg = _tune_config(make_config, name="ada", searcher={"name": "adamerging"})
    with pytest.raises(ConfigError, match=r"executor\.kind: 'tune'.*adamerging.*executor\.kind"):
        _run(cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"executor\.kind: 'tune'"):
        api.run(cfg)
    assert not [t for t in stored_trials(cfg) if t.state != TrialState.WAITING]


def test_trainable_in_a_user_tuner_matches_the_inline_evaluator(make_config, tmp_path) -> None:
    cfg = make_config(name="user", executor={"kind": "inline", "threads": 1})
    space = search_space(cfg)
    assert set(space) == {f"lambda.{t}" for t in TASKS}
    assert (space["lambda.low"].lower, space["lambda.low"].upper) == (0.0, 1.0)
    assert tune_objective(cfg) == ("mean", "max")
    points = [
        {"lambda.low": 0.3, "lambda.high": 0.3, "lambda.parity": 0.3, "lambda.loop": 0.3},
        {"lambda.low": 0.9, "lambda.high": 0.1, "lambda.parity": 0.5, "lambda.loop": 0.2},
    ]
    tuner = tune.Tuner(
        make_trainable(cfg),
        param_space={"point": tune.grid_search(list(range(len(points)))), **_flat(points)},
        tune_config=tune.TuneConfig(
            metric="mean", mode="max", max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray_results"), verbose=0),
    )
    results = sorted(tuner.fit(), key=lambda r: r.config["point"])
    evaluator = Evaluator(cfg)
    setup = open_study(cfg)
    for result, point in zip(results, points):
        assert result.error is None
        got = result.metrics
        ref = evaluator.evaluate(Job(0, setup.space.to_plan(point)))
        for task in TASKS:
            assert got["metrics"][task] == pytest.approx(ref.metrics[task], abs=1e-6)
        assert got["mean"] == pytest.approx(statistics.mean(ref.metrics.values()), abs=1e-6)
        assert got["timings"]["merge_s"] > 0 and got["timings"]["eval_s"] > 0
    # The second trial ran on the reused actor: the pool stayed loaded.
    assert [r.metrics["cold_start"] for r in results] == [True, False]
    assert results[0].metrics["worker"] == results[1].metrics["worker"]
    assert results[0].metrics["mean"] != results[1].metrics["mean"]


def _flat(points: list[dict[str, float]]) -> dict:
    """Each parameter chosen by the trial's ``point`` index (a grid over whole points)."""
    return {
        name: tune.sample_from(lambda spec, n=name: points[spec.config["point"]][n])
        for name in points[0]
    }


def test_quickstart_tune_experiment_opens(digits_zoo, tmp_path) -> None:
    path = Path(__file__).resolve().parents[2] / "experiments" / "quickstart_tune.yaml"
    setup = open_study(api.load_config_dict(path, [f"storage=sqlite:///{tmp_path}/q.db"]))
    assert (setup.cfg.executor.kind, setup.cfg.executor.workers) == ("tune", 2)
    assert setup.searcher.name == "tpe" and setup.space.dim == 20
    check_tune_searcher(setup)  # a plain sampler: accepted
