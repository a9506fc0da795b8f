"""The worker side of a trial: load once, then merge in place and evaluate per job."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from mergesweep.config import ExperimentConfig, parse_config, resolve_strings
from mergesweep.merge.kernels import tune_kernel
from mergesweep.pool import ModelPool, PoolLayout, PoolSpec
from mergesweep.runtime.base import Job, JobResult

__all__ = ["Evaluator", "pool_spec", "resolved_config"]


def resolved_config(config: dict[str, Any]) -> ExperimentConfig:
    """The stored (unresolved) config dict with ``${zoo:...}`` and ``~`` resolved."""
    return parse_config(resolve_strings(config))


def pool_spec(cfg: ExperimentConfig) -> PoolSpec:
    p = cfg.pool
    return PoolSpec(
        base=p.base,
        experts=dict(p.experts),
        include=tuple(p.include),
        exclude=tuple(p.exclude),
        dtype=p.dtype,
        device=p.device,
        trust_pickle=p.trust_pickle,
    )


class Evaluator:
    """Holds the pool, the prepared merge method and the objectives' data resident.

    Built from the study's stored config (paths, not tensors), so a Ray actor can build its own.
    """

    def __init__(self, config: dict[str, Any], layout: PoolLayout | None = None) -> None:
        from mergesweep.merge import PrepareContext, build_method
        from mergesweep.objectives import build_objective

        start = time.perf_counter()
        self.cfg = resolved_config(config)
        torch.set_num_threads(self.cfg.executor.threads)
        self.pool = ModelPool(pool_spec(self.cfg), layout)
        self.objectives = {
            task: build_objective(task, dict(spec))
            for task, spec in self.cfg.objectives.tasks.items()
        }
        for obj in self.objectives.values():
            obj.setup(self.pool, self.cfg.seed)
        heads = {task: getattr(obj, "head", task) or task for task, obj in self.objectives.items()}
        self.heads = heads
        # Data-dependent methods (Fisher) see each expert's own task data.
        ctx = PrepareContext(seed=self.cfg.seed)
        for task, obj in self.objectives.items():
            if heads[task] not in ctx.batches:
                ctx.batches[heads[task]] = obj.batches
                ctx.logits[heads[task]] = obj.logits
        self.method = build_method(self.cfg.method.name, self.cfg.method.options)
        self.method.prepare(self.pool, ctx)
        tune_kernel(self.pool.live, self.pool.tau)  # once, here: not in the first trial's merge_s
        self.load_s = time.perf_counter() - start

    def evaluate(self, job: Job) -> JobResult:
        """Merge ``job.plan`` into the live weights and score every task (on the examples
        between the prefixes ``job.start`` and ``job.fraction`` of each task's subset).

        A raising objective or a non-finite metric gives a failed result with the reason; the
        worker stays usable.
        """
        for obj in self.objectives.values():
            obj.take_timings()  # drop what a failed trial left behind
        try:
            t0 = time.perf_counter()
            self.method.apply(self.pool, job.plan)
            if self.pool.live.is_cuda:  # kernels run asynchronously: merge_s is their end
                torch.cuda.synchronize(self.pool.live.device)
            t1 = time.perf_counter()
            metrics: dict[str, float] = {}
            counts: dict[str, int] = {}
            examples: dict[str, list[float]] = {}
            part = job.fraction < 1.0 or job.start > 0.0
            for task, obj in self.objectives.items():
                model = self.pool.model(self.heads[task])
                if job.positions is not None or job.examples:
                    values = (
                        obj.evaluate_positions(model, job.positions[task])
                        if job.positions is not None
                        else obj.evaluate_examples(model, job.start, job.fraction)
                    )
                    if job.examples:
                        examples[task] = values.tolist()
                    total, counts[task] = float(values.sum()), len(values)
                    value = total / counts[task] if counts[task] else 0.0
                elif part:
                    total, counts[task] = obj.evaluate_range(model, job.start, job.fraction)
                    value = float(total / counts[task]) if counts[task] else 0.0
                else:
                    value = float(obj.evaluate(model))
                if not math.isfinite(value):
                    return JobResult(job.number, metrics, error=f"objective '{task}' gave {value}")
                metrics[task] = value
            t2 = time.perf_counter()
        except Exception as exc:  # the trial fails, the sweep goes on
            return JobResult(job.number, error=f"{type(exc).__name__}: {exc}")
        timings = {"merge_s": t1 - t0, "eval_s": t2 - t1}
        for obj in self.objectives.values():  # parts of eval_s the objectives time themselves
            for key, value in obj.take_timings().items():
                timings[key] = timings.get(key, 0.0) + value
        return JobResult(job.number, metrics, timings, counts=counts, examples=examples)
