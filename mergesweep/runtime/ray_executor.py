"""The Ray executor: N long-lived actors, each holding the pool resident, refilled as they free.

Each actor builds its own :class:`~mergesweep.runtime.worker.Evaluator` from the study's config
(paths, never tensors shipped from the driver) once, then merges in place and evaluates one job
at a time. The driver keeps ``1 + executor.prefetch`` jobs per actor in flight and refills as
soon as a result arrives (``ray.wait(num_returns=1)``): no generation barrier, and with a job
queued behind the running one the actor starts its next trial the moment it finishes this one,
while the driver asks and tells in parallel (its overhead leaves the trial's critical path).

Faults:

- an objective that raises or gives NaN fails its trial inside the actor (the actor lives on);
- a trial running past ``executor.trial_timeout_s`` fails with ``timeout after N s``; its actor
  is killed and replaced, so a hung trial never blocks a worker;
- an actor that dies mid-trial (killed, OOM, segfault) gives ``JobResult(retry=True)``: the
  driver fails the trial and re-queues its point; Ray restarts the actor (``max_restarts``),
  which reloads the pool, and a permanently dead actor is replaced;
- an actor that cannot load the pool, resources the cluster does not have, or an unreachable
  ``executor.ray_address`` raise a one-line :class:`~mergesweep.errors.MergesweepError`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from mergesweep.config import ExecutorConfig, parse_config
from mergesweep.errors import ExecutorError
from mergesweep.pool import PoolLayout
from mergesweep.runtime.base import Executor, Job, JobResult
from mergesweep.runtime.ray_cluster import available, check_resources, connect_ray
from mergesweep.runtime.ray_worker import Worker

__all__ = ["ExecutorError", "RayExecutor"]

# Ray restarts a crashed actor this many times before the slot replaces it with a new one.
MAX_RESTARTS = 3
# Consecutive failed loads of one slot before the sweep stops (a node that cannot hold the pool).
MAX_LOAD_FAILURES = 3


@dataclass
class _Run:
    """A job given to an actor: its ``run(job)`` ref once dispatched."""

    job: Job
    ref: Any = None


@dataclass
class _Slot:
    """One worker position: its actor, whether it is loaded, and the jobs it holds (in order;
    the actor runs one at a time, so only the first can have started)."""

    index: int
    actor: Any
    ready_ref: Any = None  # pending ``ready()`` while (re)loading
    ready_since: float = 0.0
    loaded: bool = False
    runs: list[_Run] = field(default_factory=list)
    started: float = 0.0  # when the first run started (or became first)
    load_failures: int = 0
    info: dict[str, Any] = field(default_factory=dict)


_DEATHS: tuple[type[BaseException], ...] = ()


def _deaths() -> tuple[type[BaseException], ...]:
    """Ray errors meaning the worker process is gone (not the trial's fault)."""
    global _DEATHS
    if not _DEATHS:
        from ray import exceptions as rx

        _DEATHS = tuple(
            getattr(rx, n)
            for n in (
                "RayActorError",
                "WorkerCrashedError",
                "OutOfMemoryError",
                "NodeDiedError",
                "ObjectLostError",
                "OwnerDiedError",
            )
            if hasattr(rx, n)
        )
    return _DEATHS


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class RayExecutor(Executor):
    """Runs jobs on ``executor.workers`` Ray actors that keep the pool resident.

    Args:
        config: the study's stored config (``${zoo:...}`` unresolved: each actor resolves paths
            on its own node).
        layout: the pool's layout, read on the driver (metadata only).
        ready_timeout_s: how long a worker may take to load the pool before the sweep stops.
    """

    def __init__(
        self,
        config: dict[str, Any],
        layout: PoolLayout | None = None,
        *,
        ready_timeout_s: float = 600.0,
    ) -> None:
        import ray

        ex = _executor_config(config)
        self.config = config
        self.layout = layout
        self.workers = ex.workers
        self.threads = ex.threads
        self.num_gpus = ex.num_gpus
        self.timeout_s = ex.trial_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.depth = 1 + ex.prefetch  # jobs per actor: the running one and those queued
        self.capacity = ex.workers * self.depth
        self.started_ray = connect_ray(ex.ray_address, cpus=ex.workers * ex.threads)
        self._slots: list[_Slot] = []
        self._done: list[JobResult] = []
        try:
            check_resources(ex.workers, float(ex.threads), ex.num_gpus)
            self._actor_cls = ray.remote(Worker)
            self._slots = [_Slot(i, self._new_actor()) for i in range(ex.workers)]
            for slot in self._slots:
                self._start_loading(slot)
            self._await_loaded()
        except BaseException:
            self.shutdown()
            raise

    # -- actors ----------------------------------------------------------------------------
    def _new_actor(self) -> Any:
        return self._actor_cls.options(
            num_cpus=self.threads,
            num_gpus=self.num_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,
        ).remote(self.config, self.layout)

    def _start_loading(self, slot: _Slot) -> None:
        slot.loaded = False
        slot.ready_ref = slot.actor.ready.remote()
        slot.ready_since = time.monotonic()

    def _replace(self, slot: _Slot) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(slot.actor, no_restart=True)
        slot.actor = self._new_actor()
        for run in slot.runs:  # never started on the new actor: dispatched once it has loaded
            run.ref = None
        self._start_loading(slot)

    def _await_loaded(self) -> None:
        """Block until every worker has loaded the pool (a bad path fails here, before trials)."""
        while any(not s.loaded for s in self._slots):
            self._poll(self._pending_refs(), self._next_deadline())

    # -- the executor protocol --------------------------------------------------------------
    def submit(self, job: Job) -> None:
        free = [s for s in self._slots if len(s.runs) < self.depth]
        if not free:
            raise RuntimeError("RayExecutor.submit: every worker is busy (respect capacity)")
        slot = min(free, key=lambda s: (not s.loaded, len(s.runs)))  # loaded, least held first
        slot.runs.append(_Run(job))
        if slot.loaded:
            self._dispatch(slot)

    def wait_any(self, timeout: float | None = None) -> list[JobResult]:
        """Block until at least one job finishes (or ``timeout``); return what finished."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            refs = self._pending_refs()
            if not refs:
                break
            wait = self._next_deadline()
            if end is not None:
                left = max(0.0, end - time.monotonic())
                wait = left if wait is None else min(wait, left)
            self._poll(refs, wait)
            if end is not None and time.monotonic() >= end:
                break
        done, self._done = self._done, []
        return done

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(evaluator, *args)`` on the first worker (after any job it is running)."""
        import ray

        self._await_loaded()
        try:
            return ray.get(self._slots[0].actor.call.remote(fn, *args))
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def load_info(self) -> dict[str, Any]:
        return {
            s.info.get("worker", str(s.index)): {"load_s": s.info.get("load_s", 0.0)}
            for s in self._slots
        }

    def worker_stats(self) -> list[dict[str, Any]]:
        """Per worker: its name, node, trials run and resident memory (``rss_mb``)."""
        import ray

        return ray.get([s.actor.stats.remote() for s in self._slots], timeout=60)

    def shutdown(self) -> None:
        import ray

        for slot in self._slots:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
        self._slots = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
            self.started_ray = False

    # -- internals ----------------------------------------------------------------------------
    def _dispatch(self, slot: _Slot) -> None:
        """Send the slot's undispatched jobs to its (loaded) actor, in order."""
        for i, run in enumerate(slot.runs):
            if run.ref is None:
                run.ref = slot.actor.run.remote(run.job)
                if i == 0:
                    slot.started = time.monotonic()

    def _pending_refs(self) -> list[Any]:
        refs = []
        for s in self._slots:
            if s.loaded:
                refs.extend(r.ref for r in s.runs if r.ref is not None)
            elif s.ready_ref is not None:
                refs.append(s.ready_ref)
        return refs

    def _next_deadline(self) -> float | None:
        """Seconds until the nearest trial timeout or load timeout."""
        now = time.monotonic()
        waits = [s.ready_since + self.ready_timeout_s - now for s in self._slots if not s.loaded]
        if self.timeout_s:
            waits += [s.started + self.timeout_s - now for s in self._slots if _running(s)]
        return max(0.0, min(waits)) if waits else None

    def _poll(self, refs: list[Any], wait: float | None) -> None:
        import ray

        if refs:
            ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
            if ready:  # collect whatever else has finished too
                more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                ready = list({r: None for r in [*ready, *more]})
            for ref in ready:
                self._collect(ref)
        self._expire()

    def _collect(self, ref: Any) -> None:
        import ray

        slot = next(
            (s for s in self._slots if ref == s.ready_ref or any(ref == r.ref for r in s.runs)),
            None,
        )
        if slot is None:  # a queued job of an actor that just died: re-sent after its reload
            return
        if ref == slot.ready_ref and not slot.loaded:
            self._loaded(slot, ref)
            return
        i = next(i for i, r in enumerate(slot.runs) if r.ref == ref)
        job = slot.runs.pop(i).job
        try:
            result = ray.get(ref)
        except _deaths() as exc:
            result = JobResult(job.number, error=f"worker died: {_first_line(exc)}", retry=True)
            result.worker = slot.info.get("worker", "")
            # The jobs queued behind this one never ran: they go to the restarted actor.
            for run in slot.runs[i:]:
                run.ref = None
            self._start_loading(slot)  # Ray restarts the actor; ready() waits for the reload
        except ray.exceptions.RayError as exc:  # e.g. the job could not be (un)pickled
            result = JobResult(job.number, error=_first_line(exc))
        if i == 0:
            slot.started = time.monotonic()  # the next queued job starts now
        self._done.append(result)

    def _loaded(self, slot: _Slot, ref: Any) -> None:
        import ray

        try:
            info = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:  # restarting: ask again (same deadline)
            time.sleep(0.2)
            slot.ready_ref = slot.actor.ready.remote()
            return
        except _deaths() as exc:  # died while loading: restarts exhausted, or a crash
            slot.load_failures += 1
            self._load_failed(slot, f"worker died while loading the pool: {_first_line(exc)}")
            return
        if info["error"]:
            raise ExecutorError(
                f"pool: worker {info['worker']} cannot load the pool: {info['error']}"
            )
        slot.loaded, slot.ready_ref, slot.load_failures, slot.info = True, None, 0, info
        self._dispatch(slot)

    def _load_failed(self, slot: _Slot, reason: str) -> None:
        if slot.load_failures >= MAX_LOAD_FAILURES:
            raise ExecutorError(f"pool: worker {slot.index}: {reason} ({slot.load_failures}×)")
        for run in slot.runs:  # the held jobs never started: fail them, retry their points
            self._done.append(JobResult(run.job.number, error=reason, retry=True))
        slot.runs = []
        self._replace(slot)

    def _expire(self) -> None:
        """Fail trials past their timeout (replacing their actor) and stop on stuck loads."""
        now = time.monotonic()
        for slot in self._slots:
            if self.timeout_s and _running(slot) and now - slot.started >= self.timeout_s:
                job = slot.runs.pop(0).job
                result = JobResult(job.number, error=f"timeout after {self.timeout_s:g} s")
                result.worker = slot.info.get("worker", "")
                self._done.append(result)
                self._replace(slot)  # the hung actor is killed; a fresh one reloads
            elif not slot.loaded and now - slot.ready_since >= self.ready_timeout_s:
                raise ExecutorError(
                    f"executor: worker {slot.index} did not load the pool within "
                    f"{self.ready_timeout_s:g} s (Ray resources available: "
                    f"{available()}); check the cluster's nodes and the pool's size"
                )


def _running(slot: _Slot) -> bool:
    """The slot's actor is loaded and running its first job."""
    return slot.loaded and bool(slot.runs) and slot.runs[0].ref is not None


def _executor_config(config: dict[str, Any]) -> ExecutorConfig:
    """The validated ``executor`` section (paths stay unresolved: workers resolve their own)."""
    return parse_config(config).executor
