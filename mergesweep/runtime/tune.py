"""``executor: tune``: the whole sweep through Ray Tune, on the study's own Optuna storage.

:func:`run_tune_sweep` runs ``ray.tune.Tuner`` with :class:`StudySearch`, an ``OptunaSearch``
given the searcher's sampler, the study's storage object and name, its directions as
``metric``/``mode`` and the space's distributions; each Tune trial runs
:func:`~mergesweep.runtime.tune_trainable.merge_trainable`. The search algorithm lives in this
process, so only the driver writes to the storage, and a trial gets exactly the records of
:func:`~mergesweep.driver.run_sweep`'s trials (``plan``, ``driver``, ``metrics``, ``timings``,
``worker``, values, ``fail_reason``, re-queues) plus ``tune`` (Tune's trial id, whether its
actor loaded the pool). An Optuna trial is COMPLETE only with its values; a failed one is FAIL
with its reason. The budget counts complete trials, so ``mergesweep resume`` works the same.

What differs from ``executor: ray``: Tune starts an actor per trial unless it reuses actors
(this module asks Tune to reuse them: the pool then loads once per actor), every trial goes
through Tune's scheduling, result logging (CSV/JSON/TensorBoard under ``~/ray_results/<study>``)
and experiment checkpoints, and ``executor.trial_timeout_s`` kills a trial's actor (counting
a cold actor's pool load). Searchers with a loop of their own (AdaMerging, nested MAP) are
refused: they work on resident workers, which Tune does not give them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search import Searcher as TuneSearcher
from ray.tune.search.optuna import OptunaSearch

from mergesweep.batching import batched_writes
from mergesweep.errors import ConfigError
from mergesweep.runtime.base import JobResult
from mergesweep.runtime.tune_trainable import (
    ERROR_KEY,
    TrialError,
    evaluate_point,
    make_trainable,
    merge_trainable,
    search_space,
    tune_objective,
)
from mergesweep.study import StudySetup

__all__ = [
    "StudySearch",
    "TrialError",
    "check_tune_searcher",
    "evaluate_point",
    "make_trainable",
    "merge_trainable",
    "run_tune_sweep",
    "search_space",
    "tune_objective",
]


def check_tune_searcher(setup: StudySetup) -> None:
    """Refuse searchers that run a loop of their own (``drive``): they need resident workers."""
    from mergesweep.search import Searcher

    if type(setup.searcher).drive is not Searcher.drive:
        raise ConfigError(
            f"executor.kind: 'tune' runs the study through Ray Tune's OptunaSearch, but "
            f"searcher '{setup.searcher.name}' runs a loop of its own on resident workers; "
            "use executor.kind: ray (or inline) for it"
        )


class StudySearch(OptunaSearch):
    """``OptunaSearch`` on the study itself, writing the records the mergesweep driver writes.

    It stops suggesting once the study holds ``budget`` complete trials of its own (counting
    in-flight ones, re-suggesting when one fails), or when more than ``budget.max_failures``
    trials failed. Its state lives in the storage: Tune's experiment checkpoints of it are
    placeholders, and a stopped sweep continues with ``mergesweep resume``.
    """

    def __init__(self, setup: StudySetup, budget: int, *, progress: bool = False) -> None:
        from mergesweep.dashboard import FigureRefresher
        from mergesweep.driver import _Progress, complete_count
        from mergesweep.pareto import HypervolumeTracker
        from mergesweep.search import distributions
        from mergesweep.storage import count_trials

        modes = ["max" if d == "maximize" else "min" for d in setup.directions]
        many = len(modes) > 1
        super().__init__(
            space=distributions(setup.space),
            metric=list(setup.metric_names) if many else setup.metric_names[0],
            mode=modes if many else modes[0],
            sampler=setup.study.sampler,
            study_name=setup.cfg.name,
            storage=setup.study._storage,  # the study's own storage object (and its cache)
        )
        self.setup = setup
        self.budget = budget
        self.driver = uuid.uuid4().hex[:12]
        done = complete_count(setup.study)
        self.forked = count_trials(setup.study, TrialState.COMPLETE) - done
        self.done = done
        self.failed = 0
        self.overhead_s = 0.0
        self.stop_reason: str | None = None
        self.live: dict[str, float] = {}  # Tune trial id -> when it was suggested
        self.timed_out: dict[str, float] = {}
        self.retries: dict[int, int] = {}
        self.hv = HypervolumeTracker.start(setup, _BaseScores(setup) if many else None)
        self.bar = _Progress(progress, budget, done, setup.cfg.name)
        self.figures = FigureRefresher(setup)

    # -- Tune's searcher interface -------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        from mergesweep.storage import count_trials

        if self.stop_reason is not None:
            return TuneSearcher.FINISHED
        # Recounted from the storage: other drivers on the same study count toward the budget.
        self.done = count_trials(self.setup.study, TrialState.COMPLETE) - self.forked
        if self.done + len(self.live) >= self.budget:
            return None if self.live else TuneSearcher.FINISHED
        t0 = time.perf_counter()
        with batched_writes(self.setup.study):  # params + attrs: one transaction
            config = super().suggest(trial_id)
            trial = self._ot_trials[trial_id]
            trial.set_user_attr("driver", self.driver)
            plan = self.setup.space.to_plan(trial.params)
            trial.set_user_attr("plan", plan.summary(self.setup.layout.experts))
        self.overhead_s += time.perf_counter() - t0
        self.live[trial_id] = t0
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """One report per trial: nothing to prune on (no intermediate values)."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        from mergesweep.driver import _finish

        if trial_id not in self.live:
            return
        start = self.live.pop(trial_id)
        self._completed_trials.add(trial_id)
        trial = self._ot_trials[trial_id]
        t0 = time.perf_counter()
        if result is None and not error:  # stopped before it ran (an interrupted fit)
            _interrupt(self.setup.study, trial)
            return
        job = self._job(trial_id, result, error, wall=t0 - start)
        trial.set_user_attr("tune", {"trial_id": trial_id, "cold_start": job.cold})
        cap = self.setup.cfg.executor.max_retries
        if _finish(self.setup, trial, job.result, self.retries, cap, self.hv):
            self.done += 1
        else:
            self.failed += 1
        self.overhead_s += time.perf_counter() - t0
        self.bar.update(self.done, self.setup.study)
        self.figures.tick(self.done)
        if self.failed > self.setup.cfg.budget.max_failures and self.stop_reason is None:
            self.stop_reason = (
                f"budget.max_failures: {self.failed} trials failed (limit "
                f"{self.setup.cfg.budget.max_failures}); last: {job.result.error}"
            )

    def _job(self, trial_id: str, result: dict | None, error: bool, wall: float) -> _Outcome:
        """A Tune outcome as the driver's :class:`JobResult` (with the trial's overhead)."""
        number = self._ot_trials[trial_id].number
        if trial_id in self.timed_out:
            limit = self.timed_out[trial_id]
            return _Outcome(JobResult(number, error=f"timeout after {limit:g} s"), True)
        if error or result is None:  # the trainable never raises: its actor died
            msg = "Ray Tune trial error: its actor died (killed, out of memory, crashed)"
            return _Outcome(JobResult(number, error=msg, retry=True), True)
        cold = bool(result.get("cold_start", True))
        metrics = {k.removeprefix("metrics/"): v for k, v in result.items() if k[:8] == "metrics/"}
        timings = {k.removeprefix("timings/"): v for k, v in result.items() if k[:8] == "timings/"}
        if result.get(ERROR_KEY):
            return _Outcome(JobResult(number, metrics, timings, error=str(result[ERROR_KEY])), cold)
        work = timings.get("merge_s", 0.0) + timings.get("eval_s", 0.0)
        # Everything in the trial's wall time but merge, evaluation and a cold actor's load.
        loaded = timings.get("load_s", 0.0) if cold else 0.0
        timings["overhead_s"] = max(0.0, wall - work - loaded)
        return _Outcome(JobResult(number, metrics, timings, worker=str(result["worker"])), cold)

    # -- checkpoints: the storage holds the state ----------------------------------------
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            fh.write(f"state in the Optuna storage: study '{self.setup.cfg.name}'\n")

    def restore(self, checkpoint_path: str) -> None:
        raise ConfigError(
            "executor.kind: a tune sweep is continued with 'mergesweep resume STUDY', "
            "not Tuner.restore (its state lives in the study's storage)"
        )

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its config into tuner.pkl
        return {"study": self.setup.cfg.name}

    # -- the end of a run ----------------------------------------------------------------
    def close(self) -> None:
        """Fail and re-queue the trials Tune never finished (interrupted): none stays RUNNING."""
        self.bar.close()
        for trial_id in list(self.live):
            self.live.pop(trial_id)
            _interrupt(self.setup.study, self._ot_trials[trial_id])


class _Outcome:
    __slots__ = ("cold", "result")

    def __init__(self, result: JobResult, cold: bool) -> None:
        self.result = result
        self.cold = cold


def _interrupt(study: optuna.Study, trial: optuna.Trial) -> None:
    """The driver's handling of an interrupted trial: FAIL, its point re-queued once."""
    trial.set_user_attr("fail_reason", "interrupted")
    if "requeue_of" not in trial.user_attrs:
        trial.set_user_attr("requeued", True)
        study.enqueue_trial(trial.params, user_attrs={"requeue_of": trial.number})
    study.tell(trial, state=TrialState.FAIL)


class _BaseScores:
    """``executor.call(base_scores)`` for the hypervolume reference: one Ray task."""

    def __init__(self, setup: StudySetup) -> None:
        self.setup = setup

    def call(self, fn: Any, *args: Any) -> Any:
        import ray

        ex = self.setup.cfg.executor

        @ray.remote(num_cpus=ex.threads, num_gpus=ex.num_gpus, max_retries=0)
        def run(config: dict[str, Any]) -> Any:
            from mergesweep.runtime.worker import Evaluator

            return fn(Evaluator(config), *args)

        return ray.get(run.remote(self.setup.config))


class _Timeouts(Callback):
    """``executor.trial_timeout_s``: kill the actor of a trial running longer (Tune then fails
    the trial, which the search records as ``timeout after N s``)."""

    def __init__(self, search: StudySearch, limit_s: float) -> None:
        self.search = search
        self.limit_s = limit_s
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        import ray

        now = time.monotonic()
        for trial in trials:
            began = self.started.get(trial.trial_id)
            if (
                began is None
                or trial.status != "RUNNING"
                or trial.trial_id in self.search.timed_out
            ):
                continue
            actor = getattr(trial.temporary_state, "ray_actor", None)
            if now - began > self.limit_s and actor is not None:
                self.search.timed_out[trial.trial_id] = self.limit_s
                ray.kill(actor, no_restart=True)


def run_tune_sweep(
    setup: StudySetup,
    *,
    progress: bool = True,
    run_config: Any = None,
    scheduler: Any = None,
    reuse_actors: bool = True,
) -> Any:
    """Run the study through ``ray.tune.Tuner`` until ``budget.trials`` complete trials.

    Args:
        setup: the opened study (``mergesweep.study.open_study``).
        progress: show mergesweep's progress bar (Tune's own console output is off).
        run_config: a ``ray.tune.RunConfig`` for Tune's loggers and callbacks (default:
            ``name`` = the study, ``storage_path`` = Tune's default ``~/ray_results``).
        scheduler: a Tune trial scheduler (each trial reports once, at its end).
        reuse_actors: let Tune reuse a trial's actor (and its loaded pool) for the next trial.

    Returns:
        The :class:`~mergesweep.driver.SweepSummary` the driver returns.

    Raises:
        ConfigError: the searcher runs a loop of its own, or the resources do not exist.
        SweepError: more than ``budget.max_failures`` trials failed.
    """
    from ray import tune

    from mergesweep.driver import SweepError, SweepSummary, complete_count
    from mergesweep.report import best_trials
    from mergesweep.runtime.ray_cluster import check_resources, connect_ray

    check_tune_searcher(setup)
    cfg, study = setup.cfg, setup.study
    start = time.perf_counter()
    budget = cfg.budget.trials
    cap = setup.searcher.max_trials(setup.space)
    if cap is not None:
        budget = min(budget, cap)
    ex = cfg.executor

    def summary(failed: int, overhead: float) -> SweepSummary:
        return SweepSummary(
            study=cfg.name,
            storage=setup.storage_url,
            complete=complete_count(study),
            failed=failed,
            best=best_trials(study, limit=5),
            overhead_s=overhead,
            wall_s=time.perf_counter() - start,
        )

    if complete_count(study) >= budget:
        return summary(0, 0.0)
    started_ray = connect_ray(ex.ray_address, cpus=ex.workers * ex.threads)
    search: StudySearch | None = None
    try:
        check_resources(ex.workers, float(ex.threads), ex.num_gpus)
        search = StudySearch(setup, budget, progress=progress)
        remaining = budget - search.done
        quiet = run_config is None  # our progress bar, not Tune's console output
        run_config = run_config or tune.RunConfig(name=_run_name(cfg.name), verbose=0)
        if ex.trial_timeout_s:
            timeouts = _Timeouts(search, ex.trial_timeout_s)
            callbacks = [*(run_config.callbacks or []), timeouts]
            run_config = dataclasses.replace(run_config, callbacks=callbacks)
        tuner = tune.Tuner(
            make_trainable(setup.config, on_failure="report"),
            tune_config=tune.TuneConfig(
                search_alg=search,
                scheduler=scheduler,
                # An upper bound: the search ends itself at the budget of complete trials, and
                # every trial beyond it is a failure (the sweep stops after max_failures + 1).
                num_samples=remaining + cfg.budget.max_failures + 1,
                max_concurrent_trials=ex.workers,
                reuse_actors=reuse_actors,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=run_config,
        )
        with _tune_output(quiet):
            tuner.fit()
    finally:
        if search is not None:
            search.close()
        if started_ray:
            import ray

            ray.shutdown()
    if search.stop_reason is not None:
        raise SweepError(search.stop_reason)
    setup.searcher.finalize(setup)
    search.figures.close()
    return summary(search.failed, search.overhead_s)


@contextlib.contextmanager
def _tune_output(quiet: bool) -> Iterator[None]:
    """Tune's console reporter prints its experiment table even at ``verbose=0``; its legacy
    reporter (``RAY_AIR_NEW_OUTPUT=0``) does not."""
    if not quiet or "RAY_AIR_NEW_OUTPUT" in os.environ:
        yield
        return
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)


def _run_name(study: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study)
    return f"mergesweep-{safe}"
