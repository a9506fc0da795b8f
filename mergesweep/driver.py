"""The sweep loop: ask → plan → submit → tell, keeping every worker busy, until the budget.

Only this loop writes to the storage. A trial's metrics, timings and plan summary are written as
user attrs *before* ``tell``, so a complete trial is always whole; a driver killed at any moment
leaves at most RUNNING trials, which :func:`mergesweep.study.reconcile` fails and re-queues.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from mergesweep.batching import batched_writes, coalesced_reads
from mergesweep.dashboard import FigureRefresher
from mergesweep.errors import MergesweepError
from mergesweep.pareto import HypervolumeTracker
from mergesweep.pruning import EXAMPLES_ATTR, PairedPruner, Rungs
from mergesweep.runtime import Executor, Job, JobResult, build_executor
from mergesweep.search import distributions
from mergesweep.storage import count_trials
from mergesweep.study import StudySetup

__all__ = [
    "SweepError",
    "SweepSummary",
    "complete_count",
    "evaluate_points",
    "run_sweep",
    "study_values",
]


class SweepError(MergesweepError, RuntimeError):
    """The sweep stopped before its budget (too many failed trials)."""


@dataclass
class SweepSummary:
    """What a finished sweep reports."""

    study: str
    storage: str
    complete: int
    failed: int
    best: list[dict[str, Any]] = field(default_factory=list)
    overhead_s: float = 0.0
    wall_s: float = 0.0
    pruned: int = 0


def study_values(
    setup: StudySetup, metrics: dict[str, float], params: dict[str, float] | None = None
) -> list[float]:
    """Per-task metrics → the study's values (one aggregate, or one per task for pareto).

    With the trial's ``params``, the searcher's :meth:`~mergesweep.search.Searcher.transform_values`
    applies (Evo-Merging adds its penalty on the point there).
    """
    from mergesweep.objectives.aggregate import aggregate

    mode = setup.cfg.objectives.mode
    if mode == "pareto":
        values = [metrics[t] for t in setup.objectives]
    else:
        dirs = {t: o.direction for t, o in setup.objectives.items()}
        values = [aggregate(metrics, dirs, mode, setup.cfg.objectives.weights or None)]
    if params is not None:
        values = setup.searcher.transform_values(values, params)
    return values


def complete_count(study: optuna.Study) -> int:
    """Complete trials that count toward this study's budget (forked ones do not)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "forked_from" not in t.user_attrs
    )


def _finished(study: optuna.Study, pruning: bool) -> int:
    """Trials that count toward the budget: complete ones, and pruned ones when pruning."""
    pruned = count_trials(study, TrialState.PRUNED) if pruning else 0
    return count_trials(study, TrialState.COMPLETE) + pruned


def _best_line(study: optuna.Study) -> str:
    try:
        if len(study.directions) == 1:
            return f"best {study.best_value:.4f}"
        return f"front {len(study.best_trials)}"
    except ValueError:
        return "best -"


class _Progress:
    """A rich progress bar with ETA and best-so-far, or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, done: int, name: str) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[best]}"),
        )
        self.task = self.bar.add_task(name, total=total, completed=done, best="")
        self.bar.start()

    def update(self, done: int, study: optuna.Study) -> None:
        if self.bar is not None:  # the best-so-far query costs ~20 ms: only for a visible bar
            self.bar.update(self.task, completed=done, best=_best_line(study))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_sweep(setup: StudySetup, *, progress: bool = True) -> SweepSummary:
    """Drive the study until it holds ``budget.trials`` complete trials of its own.

    Several drivers may share one study (e.g. on PostgreSQL): each counts the complete trials
    in the storage, asks only while ``complete + its own in-flight < budget`` and finishes its
    own in-flight trials. The study ends with ``budget`` complete trials plus the trials the
    other drivers still had in flight when that count was reached: at most the sum of their
    executors' capacities (two inline drivers: ``budget`` or ``budget + 1``).

    With ``pruning``, a trial climbs the rungs (nested prefixes of the evaluation subsets):
    after each rung it is reported and either pruned or resubmitted at the next rung, ahead of
    new trials, while other trials keep the executor full. Pruned trials count toward the
    budget like complete ones (Optuna's ``n_trials`` convention).
    """
    cfg, study = setup.cfg, setup.study
    budget = cfg.budget.trials
    cap = setup.searcher.max_trials(setup.space)
    if cap is not None:
        budget = min(budget, cap)
    dists = distributions(setup.space)
    driver = uuid.uuid4().hex[:12]
    start = time.perf_counter()
    rungs = Rungs(cfg.pruning)
    done = complete_count(study)
    forked = count_trials(study, TrialState.COMPLETE) - done  # fork's copies: no new ones later
    done = _finished(study, rungs.enabled) - forked
    failed = pruned = 0
    overhead = 0.0
    if done >= budget:
        return _summary(setup, done, 0, 0.0, 0.0)
    executor = build_executor(setup.config, setup.layout)
    if setup.searcher.drive(setup, executor, budget):  # searchers that run their own loop
        executor.shutdown()
        setup.searcher.finalize(setup)
        FigureRefresher(setup).close()
        return _summary(setup, complete_count(study), 0, 0.0, time.perf_counter() - start)
    retries: dict[int, int] = {}
    in_flight: dict[int, tuple[optuna.Trial, float]] = {}  # own unfinished trials
    plans: dict[int, Any] = {}
    climbing: list[int] = []  # survivors of a rung, waiting for a free worker
    running = 0  # jobs in the executor
    hv = HypervolumeTracker.start(setup, executor)  # None unless several objectives
    bar = _Progress(progress, budget, done, cfg.name)
    figures = FigureRefresher(setup)  # dashboard figures: ≥ 10 trials and 2 s apart, ≤ 5 % of time
    try:
        while True:
            # Recounted from the storage: other drivers on the same study count toward the
            # budget. Dispatch while complete + own in-flight < budget, then drain own trials.
            done = _finished(study, rungs.enabled) - forked
            if done >= budget and not in_flight:
                break
            while climbing and running < executor.capacity:
                number = climbing.pop(0)
                executor.submit(_job(number, plans[number], rungs, study))
                running += 1
            while running < executor.capacity and done + len(in_flight) < budget:
                t0 = time.perf_counter()
                # params + attrs: one transaction, not ~20; the trials read once, not 3 times
                with batched_writes(study), coalesced_reads(study):
                    trial = study.ask(dists)
                    trial.set_user_attr("driver", driver)
                    plan = setup.space.to_plan(trial.params)
                    trial.set_user_attr("plan", plan.summary(setup.layout.experts))
                in_flight[trial.number] = (trial, time.perf_counter() - t0)
                plans[trial.number] = plan
                executor.submit(_job(trial.number, plan, rungs, study))
                running += 1
            for result in executor.wait_any():
                running -= 1
                trial, ask_s = in_flight[result.number]
                t0 = time.perf_counter()
                step = _climb(setup, trial, result, rungs, ask_s)
                if step == "climb":
                    in_flight[result.number] = (trial, ask_s + time.perf_counter() - t0)
                    climbing.append(result.number)
                    overhead += time.perf_counter() - t0
                    continue
                del in_flight[result.number], plans[result.number]
                if step == "pruned":
                    done, pruned = done + 1, pruned + 1
                else:
                    result.timings["overhead_s"] = ask_s
                    attrs: dict[str, Any] = {}
                    if rungs.enabled and result.ok:  # the full subset: the last rung
                        rungs.record(result.number, None, result)
                        examples = _note_examples(study, result.number, rungs)
                        attrs[EXAMPLES_ATTR] = {
                            t: [round(v, 6) for v in values] for t, values in examples.items()
                        }
                    attrs["rungs"] = rungs.close(result.number, result.timings)
                    if _finish(setup, trial, result, retries, cfg.executor.max_retries, hv, attrs):
                        done += 1
                    else:
                        failed += 1
                spent = ask_s + time.perf_counter() - t0
                overhead += spent
                bar.update(done, study)
                figures.tick(done)
                if failed > cfg.budget.max_failures:
                    raise SweepError(
                        f"budget.max_failures: {failed} trials failed (limit "
                        f"{cfg.budget.max_failures}); last: {result.error}"
                    )
    finally:
        bar.close()
        for trial, _ in in_flight.values():  # interrupted: re-queue, leave nothing RUNNING
            trial.set_user_attr("fail_reason", "interrupted")
            if "requeue_of" not in trial.user_attrs:
                trial.set_user_attr("requeued", True)
                study.enqueue_trial(trial.params, user_attrs={"requeue_of": trial.number})
            study.tell(trial, state=TrialState.FAIL)
        executor.shutdown()
    setup.searcher.finalize(setup)
    figures.close()
    complete = complete_count(study) if rungs.enabled else done  # done counts pruned ones too
    summary = _summary(setup, complete, failed, overhead, time.perf_counter() - start)
    summary.pruned = pruned
    return summary


def _job(number: int, plan: Any, rungs: Rungs, study: optuna.Study) -> Job:
    """Trial ``number``'s next job: the examples of its next rung that it has not been scored on
    (on ``pruning.order: contentious``, a new trial first gets its order from the pruner)."""
    if rungs.needs_order(number) and isinstance(study.pruner, PairedPruner):
        rungs.assign(number, study.pruner.order(study))
    return Job(
        number,
        plan,
        rungs.fraction(number),
        rungs.start(number),
        rungs.paired,
        rungs.positions(number),
    )


def _note_examples(study: optuna.Study, number: int, rungs: Rungs) -> dict[str, list[float]]:
    """Hand trial ``number``'s per-example metrics so far to the paired pruner and return them
    (empty without the paired pruner; a complete trial's in the fixed order)."""
    if not rungs.paired or not isinstance(study.pruner, PairedPruner):
        return {}
    examples, positions = rungs.evidence(number)
    study.pruner.note(number, examples, positions)
    return examples


def _climb(
    setup: StudySetup, trial: optuna.Trial, result: JobResult, rungs: Rungs, ask_s: float
) -> str:
    """One rung below the last: report it; ``"climb"`` (resubmit at the next rung) or
    ``"pruned"`` (told PRUNED, its rungs recorded). ``"final"``: not a lower rung's success,
    for :func:`_finish` (the full subset's result, or a failure)."""
    rungs.accumulate(result.number, result)  # the rung's own examples → the whole prefix
    if not rungs.enabled or rungs.is_last(result.number) or not result.ok:
        return "final"
    (value,) = study_values(setup, result.metrics, trial.params)
    if not math.isfinite(value):
        result.error = f"non-finite study value {value} at rung {rungs.fraction(result.number)}"
        return "final"
    rung = rungs.record(result.number, value, result)["rung"]
    trial.report(value, step=rung)
    _note_examples(setup.study, result.number, rungs)
    if not trial.should_prune():
        rungs.promote(result.number)
        return "climb"
    timings = {"load_s": result.timings.get("load_s", 0.0), "overhead_s": ask_s}
    records = rungs.close(result.number, timings)
    with batched_writes(setup.study):
        trial.set_user_attr("metrics", result.metrics)
        trial.set_user_attr("timings", timings)
        trial.set_user_attr("worker", result.worker)
        trial.set_user_attr("rungs", records)
        setup.study.tell(trial, state=TrialState.PRUNED)
    return "pruned"


def _finish(
    setup: StudySetup,
    trial: optuna.Trial,
    result: JobResult,
    retries: dict[int, int],
    cap: int,
    hv: HypervolumeTracker | None = None,
    attrs: dict[str, Any] | None = None,
) -> bool:
    """Record one result (plus ``attrs`` when it completes; empty ones are left out);
    return True when the trial is COMPLETE."""
    timings = dict(result.timings)
    if result.ok:
        values = study_values(setup, result.metrics, trial.params)
        if all(math.isfinite(v) for v in values):
            # One transaction: the attrs, then the values and state (a complete trial is whole).
            with batched_writes(setup.study):
                trial.set_user_attr("metrics", result.metrics)
                trial.set_user_attr("timings", timings)
                trial.set_user_attr("worker", result.worker)
                for key, value in (attrs or {}).items():
                    if value:
                        trial.set_user_attr(key, value)
                if hv is not None:
                    trial.set_user_attr("hypervolume", hv.add(values))
                setup.study.tell(trial, values)
            return True
        result.error = f"non-finite study value {values}"
    trial.set_user_attr("fail_reason", result.error)
    if result.retry:  # the worker died, not the trial: try the point again (capped)
        origin = trial.user_attrs.get("requeue_of", trial.number)
        if retries.get(origin, 0) < cap:
            retries[origin] = retries.get(origin, 0) + 1
            trial.set_user_attr("requeued", True)
            setup.study.enqueue_trial(trial.params, user_attrs={"requeue_of": origin})
    setup.study.tell(trial, state=TrialState.FAIL)
    return False


def evaluate_points(
    setup: StudySetup,
    executor: Executor,
    points: list[dict[str, float]],
    *,
    user_attrs: dict[str, Any] | None = None,
) -> list[optuna.trial.FrozenTrial]:
    """Evaluate ``points`` as trials of the study, keeping the executor full; for searchers
    with a loop of their own (``drive``) and for evaluating a picked point.

    Each point is enqueued (with ``user_attrs``) and run like a driver trial: same records,
    same hypervolume, worker deaths re-queued (capped). Returns the complete trials, in the
    order of ``points`` (a point whose trial failed is left out).
    """
    dists = distributions(setup.space)
    hv = HypervolumeTracker.start(setup, executor)
    cap = setup.cfg.executor.max_retries
    retries: dict[int, int] = {}
    tag = uuid.uuid4().hex[:8]
    for i, point in enumerate(points):
        attrs = {**(user_attrs or {}), "batch": f"{tag}:{i}"}
        setup.study.enqueue_trial(setup.space.check(point), user_attrs=attrs)
    # Every waiting trial is asked (FIFO), ours and any left by an earlier run.
    pending = len(setup.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    in_flight: dict[int, optuna.Trial] = {}
    index: dict[int, int | None] = {}  # trial number -> its point's index (None: not ours)
    done: dict[int, int] = {}  # point index -> complete trial number
    while pending or in_flight:
        while pending and len(in_flight) < executor.capacity:
            with batched_writes(setup.study), coalesced_reads(setup.study):
                trial = setup.study.ask(dists)
            pending -= 1
            batch = str(trial.user_attrs.get("batch", ""))
            origin = trial.user_attrs.get("requeue_of")
            ours = batch.startswith(f"{tag}:")
            index[trial.number] = int(batch.split(":")[1]) if ours else index.get(origin)
            plan = setup.space.to_plan(trial.params)
            trial.set_user_attr("plan", plan.summary(setup.layout.experts))
            in_flight[trial.number] = trial
            executor.submit(Job(trial.number, plan))
        for result in executor.wait_any():
            trial = in_flight.pop(result.number)
            result.timings.setdefault("overhead_s", 0.0)
            if _finish(setup, trial, result, retries, cap, hv):
                if index[trial.number] is not None:
                    done[index[trial.number]] = trial.number
            elif trial.user_attrs.get("requeued"):
                pending += 1
    numbers = {done[i] for i in done}
    by_number = {
        t.number: t
        for t in setup.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number in numbers
    }
    return [by_number[done[i]] for i in sorted(done)]


def _summary(
    setup: StudySetup, done: int, failed: int, overhead: float, wall: float
) -> SweepSummary:
    from mergesweep.report import best_trials

    return SweepSummary(
        study=setup.cfg.name,
        storage=setup.storage_url,
        complete=done,
        failed=failed,
        best=best_trials(setup.study, limit=5),
        overhead_s=overhead,
        wall_s=wall,
    )
