"""The Ray executor with real Ray (one local 2-CPU instance for the module) and real trials."""

from __future__ import annotations

import copy
import itertools
import os
import time

import numpy as np
import pytest
from optuna.trial import TrialState
from rt_configs import stored_trials, with_callable

from mergesweep.driver import run_sweep
from mergesweep.errors import ConfigError, ExecutorError
from mergesweep.pareto import base_scores
from mergesweep.runtime import Job
from mergesweep.runtime.ray_executor import RayExecutor
from mergesweep.search import distributions
from mergesweep.study import open_study

pytestmark = pytest.mark.usefixtures("local_ray")


def test_two_workers_reach_the_budget_with_inline_results(make_config) -> None:
    cfg = make_config(budget__trials=6)
    summary = run_sweep(open_study(cfg), progress=False)
    assert (summary.complete, summary.failed) == (6, 0)
    trials = stored_trials(cfg)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both actors served trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    for t in trials:
        timings = t.user_attrs["timings"]
        assert {"load_s", "merge_s", "eval_s", "overhead_s"} <= set(timings)
        assert timings["load_s"] > 0 and timings["eval_s"] > 0

    inline = make_config(name="inline", budget__trials=1, executor={"kind": "inline"})
    run_sweep(open_study(inline), progress=False)
    (ref,) = stored_trials(inline)
    (init,) = [t for t in trials if t.user_attrs.get("enqueued")]
    assert init.params == ref.params
    assert init.user_attrs["metrics"] == ref.user_attrs["metrics"]  # same numbers, bit for bit
    assert init.values == ref.values
    assert set(init.user_attrs) == set(ref.user_attrs)
    assert ref.user_attrs["worker"] == "inline" and "@" in init.user_attrs["worker"]


def test_dead_workers_fail_requeue_and_restart(make_config, runtime_dir) -> None:
    """Workers die (os._exit) on every third objective call; the sweep still completes.

    Five complete trials need at least seven calls, so calls 2 and 5 both died. Each point
    that died is re-queued (up to ``max_retries`` times): it completed, or still waits for the
    next run when the budget filled first, or failed 1 + max_retries times.
    """
    cfg = with_callable(
        make_config(name="chaos", budget__trials=5, executor__max_retries=2), "die_every_third"
    )
    summary = run_sweep(open_study(cfg), progress=False)
    trials = stored_trials(cfg)
    table = "\n".join(  # shown when an assertion fails: the run's trials
        f"{t.number} {t.state.name} {t.user_attrs.get('requeue_of')} "
        f"{t.user_attrs.get('worker')} {t.user_attrs.get('fail_reason')}"
        for t in trials
    )
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    complete, failed = by_state[TrialState.COMPLETE], by_state[TrialState.FAIL]
    assert summary.complete == len(complete) == 5, table
    assert not by_state[TrialState.RUNNING], table
    assert len(failed) >= 2 and summary.failed == len(failed), table
    for t in complete:
        assert set(t.user_attrs["metrics"]) == {"low", "high", "parity", "loop"}
    for t in failed:
        assert t.user_attrs["fail_reason"].startswith("worker died: "), table
        origin = t.user_attrs.get("requeue_of", t.number)
        chain = [u for u in trials if u.user_attrs.get("requeue_of", u.number) == origin]
        assert all(u.params == t.params for u in chain)
        states = [u.state for u in chain]
        assert (
            states.count(TrialState.COMPLETE) == 1
            or states.count(TrialState.WAITING) == 1
            or states.count(TrialState.FAIL) == 3
        ), table
    # Both deaths struck before the seventh call, so some call ran in a restarted actor: a new
    # process that reloaded the pool (each call records its process id).
    pids = {p.read_text() for p in runtime_dir.glob("die-*")}
    assert len(pids) >= 3, (pids, table)


def test_trial_timeout_fails_the_trial_and_replaces_the_worker(make_config, runtime_dir) -> None:
    cfg = with_callable(
        make_config(
            name="hang", budget__trials=3, executor__workers=1, executor__trial_timeout_s=6
        ),
        "hang_first",
    )
    start = time.monotonic()
    summary = run_sweep(open_study(cfg), progress=False)
    assert time.monotonic() - start < 600  # not the hour the hung call sleeps (loaded CI: slow)
    trials = stored_trials(cfg)
    assert summary.complete == 3
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["fail_reason"] == "timeout after 6 s"
    assert "requeued" not in failed.user_attrs  # the trial's fault, not the worker's
    hung_pid = int((runtime_dir / "hang-0").read_text())
    with pytest.raises(ProcessLookupError):  # the hung worker was killed
        for _ in range(50):
            os.kill(hung_pid, 0)
            time.sleep(0.1)
    assert all(str(hung_pid) not in t.user_attrs.get("worker", "") for t in trials)


def test_a_worker_that_cannot_load_the_pool_stops_the_sweep(make_config) -> None:
    """The pool's path exists for the driver but not where the worker runs."""
    setup = open_study(make_config(name="badpath"))
    setup.config = copy.deepcopy(setup.config)
    setup.config["pool"]["base"] = "/nonexistent/node-local/base"
    with pytest.raises(ExecutorError, match=r"^pool: worker .* cannot load the pool: .*"):
        run_sweep(setup, progress=False)
    trials = stored_trials(setup.config)
    # Nothing ran, nothing is left RUNNING; the enqueued start point still waits.
    assert [t.state for t in trials] == [TrialState.WAITING]


def test_more_gpus_than_the_cluster_has_is_a_config_error(make_config) -> None:
    setup = open_study(make_config(name="gpus", executor__num_gpus=1))
    start = time.monotonic()
    with pytest.raises(
        ConfigError,
        match=r"^executor\.num_gpus: 2 worker\(s\) × 1 GPU need 2 GPU\(s\).* has 0 GPU\(s\)",
    ):
        run_sweep(setup, progress=False)
    assert time.monotonic() - start < 10
    assert [t.state for t in stored_trials(setup.config)] == [TrialState.WAITING]


def test_worker_memory_stays_flat(make_config) -> None:
    """200 trials on one resident worker: RSS within 5% of its value after the first."""
    cfg = make_config(name="rss", executor__workers=1)
    for spec in cfg["objectives"]["tasks"].values():
        spec["samples"] = 20  # memory, not accuracy: keep the 200 trials quick
    setup = open_study(cfg)
    dists = distributions(setup.space)
    rng = np.random.default_rng(0)
    executor = RayExecutor(setup.config, setup.layout)
    try:

        def one(number: int) -> None:
            point = {k: float(rng.uniform(d.low, d.high)) for k, d in dists.items()}
            executor.submit(Job(number, setup.space.to_plan(point)))
            (result,) = executor.wait_any()
            assert result.ok and result.number == number, result.error

        one(0)
        (first,) = executor.worker_stats()
        for n in range(1, 200):
            one(n)
        (last,) = executor.worker_stats()
        # Searchers reach the resident pool through ``call`` (here: the base model's scores).
        base = executor.call(base_scores)
    finally:
        executor.shutdown()
    assert (first["trials"], last["trials"]) == (1, 200)
    assert first["worker"] == last["worker"]  # the same process throughout
    assert last["rss_mb"] <= first["rss_mb"] * 1.05, (first, last)
    assert set(base) == {"low", "high", "parity", "loop"}
    assert all(0.0 <= v <= 1.0 for v in base.values())


@pytest.mark.parametrize("prefetch", [0, 1])
def test_prefetch_queues_jobs_behind_the_running_one(make_config, prefetch: int) -> None:
    """With ``prefetch: 1`` one worker holds two trials (the driver asks the next point while
    the worker evaluates); with 0 each trial is asked only after the previous one is told."""
    cfg = make_config(
        name=f"prefetch{prefetch}",
        budget__trials=5,
        executor={"kind": "ray", "workers": 1, "threads": 1, "prefetch": prefetch},
    )
    setup = open_study(cfg)
    summary = run_sweep(setup, progress=False)
    assert (summary.complete, summary.failed) == (5, 0)
    trials = sorted(stored_trials(cfg), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    # Trial k+1 asked before trial k was told: never without a queue; with one, whenever the
    # driver collected results one at a time (it may collect two at once on a busy machine).
    overlaps = [b.datetime_start < a.datetime_complete for a, b in itertools.pairwise(trials)]
    assert sum(overlaps) >= 2 if prefetch else sum(overlaps) == 0, overlaps
    assert len({t.user_attrs["worker"] for t in trials}) == 1


def test_two_workers_prune_and_climb_rungs(make_config) -> None:
    """Pruning on Ray: rung jobs interleave with new trials on both workers; survivors' rungs
    cover each example once and their metrics equal an inline full evaluation."""
    pruning = {"pruner": "halving", "rungs": [0.25, 0.5], "startup_trials": 3}
    cfg = make_config(budget__trials=12, searcher={"name": "tpe"}, pruning=pruning)
    summary = run_sweep(open_study(cfg), progress=False)
    trials = stored_trials(cfg)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 12 and summary.failed == 0
    assert summary.pruned == sum(t.state == TrialState.PRUNED for t in trials) > 0
    assert len({t.user_attrs["worker"] for t in done}) == 2
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.values[0])
    assert [r["fraction"] for r in best.user_attrs["rungs"]] == [0.25, 0.5, 1.0]
    inline = make_config(
        name="inline", budget__trials=1, executor={"kind": "inline"}, searcher={"name": "random"}
    )
    inline_setup = open_study(inline)
    inline_setup.study.enqueue_trial(best.params)
    run_sweep(inline_setup, progress=False)
    ref = next(t for t in stored_trials(inline) if t.params == best.params)
    assert best.user_attrs["metrics"] == pytest.approx(ref.user_attrs["metrics"], rel=1e-9)
