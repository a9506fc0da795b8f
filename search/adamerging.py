"""AdaMerging (Yang et al., ICLR 2024): merge coefficients learnt by entropy minimisation.

The coefficients are the space's parameters: one λ per expert (``space: modelwise``, task-wise
AdaMerging) or per expert and tensor / block (``space: layerwise`` with ``granularity: tensor``
or ``block``, layer-wise AdaMerging). Each Adam step minimises

    Σₖ E_{x∈Bₖ} H(softmax(hₖ(f_θ(λ)(x)))),  H(p) = −Σ p log(p + 1e-8),

over ``batches_per_task`` random minibatches of ``batch_size`` unlabelled inputs of every task
(the inputs of the task's objective; labels are never read), each through the task's own head,
with θ(λ) from the merge method's differentiable ``functional`` path and
``torch.func.functional_call``. ``method: ties`` gives AdaMerging++ (TIES-trimmed τ).

The steps run on a worker holding the pool (``executor.call``), ``record_every`` steps per
call. After each call the driver records a trial: the effective coefficients as params, the
mean entropy per task on the objectives' fixed subsets (``entropy`` user attr, and the trial's
intermediate value) and the objectives' metrics (``metrics``; accuracy where labels exist).
Intermediate trials are stored PRUNED; the final coefficients are the study's one COMPLETE
trial, hence its best trial for ``show`` and export. Each trial keeps the raw λ and the Adam
state (user attr ``adamerging``), and every minibatch is drawn from (seed, step, task): a
resumed run continues from the last recorded step exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState
from torch import nn

from mergesweep.errors import ConfigError
from mergesweep.search.base import SearchContext, Searcher, distributions
from mergesweep.spaces.base import Space

if TYPE_CHECKING:
    from mergesweep.runtime.base import Executor
    from mergesweep.study import StudySetup

__all__ = ["ATTR", "AdaMerging", "adamerging_steps", "coefficient_index"]

ATTR = "adamerging"  # trial user attr: step, raw λ, Adam state, final flag


def coefficient_index(space: Space) -> np.ndarray:
    """``(T, N)`` index of the parameter each plan coefficient equals.

    AdaMerging learns the space's parameters, so every coefficient of the plan must be one of
    them (model-wise, layer-wise and group-wise spaces). Found by probing the space with two
    points of distinct values; other spaces are refused.
    """
    params = space.params
    D = len(params)
    rng = np.random.default_rng(0)

    def probe(order: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        fracs = (order + 1) / (D + 1)
        point = {p.name: p.low + f * (p.high - p.low) for p, f in zip(params, fracs)}
        return point, np.array([point[p.name] for p in params])

    refuse = ConfigError(
        f"space.kind: adamerging learns one coefficient per parameter; a '{space.kind}' space "
        "maps its parameters otherwise (use modelwise, layerwise or groupwise)"
    )
    index = None
    for order in (np.arange(D), rng.permutation(D)):
        point, values = probe(order)
        plan = space.to_plan(point)
        if plan.densities is not None:
            raise refuse
        found = np.abs(plan.coefficients[..., None] - values).argmin(-1)
        if not np.allclose(values[found], plan.coefficients, rtol=0, atol=1e-12):
            raise refuse
        if index is not None and not np.array_equal(index, found):
            raise refuse
        index = found
    assert index is not None
    return index


# -- the worker side ----------------------------------------------------------------------------
class _Call(nn.Module):
    """``logits_fn(model, batch)`` as a module, so ``functional_call`` can swap its tensors."""

    def __init__(self, model: nn.Module, logits_fn: Any) -> None:
        super().__init__()
        self.model = model
        self.logits_fn = logits_fn

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.logits_fn(self.model, batch)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inputs(evaluator) -> dict[str, list[dict[str, Any]]]:
    """Per objective task, its (unlabelled) input batches, collected once per worker."""
    if evaluator not in _CACHE:
        _CACHE[evaluator] = {t: list(obj.batches()) for t, obj in evaluator.objectives.items()}
    return _CACHE[evaluator]


def _minibatches(batches, rng, count: int, size: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        batch = batches[int(rng.integers(len(batches)))]
        rows = next(v.shape[0] for v in batch.values() if hasattr(v, "dim") and v.dim())
        pick = np.sort(rng.choice(rows, size=min(size, rows), replace=False))
        out.append({k: v[pick] if hasattr(v, "dim") and v.dim() else v for k, v in batch.items()})
    return out


def _adam(raw, lr: float, state: dict[str, Any] | None):
    import torch

    opt = torch.optim.Adam([raw], lr=lr)
    if state:
        opt.load_state_dict(
            {
                "state": {
                    0: {
                        "step": torch.tensor(float(state["step"])),
                        "exp_avg": torch.tensor(state["exp_avg"], dtype=raw.dtype),
                        "exp_avg_sq": torch.tensor(state["exp_avg_sq"], dtype=raw.dtype),
                    }
                },
                "param_groups": opt.state_dict()["param_groups"],
            }
        )
    return opt


def adamerging_steps(evaluator, req: dict[str, Any]) -> dict[str, Any]:
    """Run ``req['n']`` Adam steps from ``req['step']`` on the worker's pool; then evaluate.

    ``req`` holds ``index`` (T×N parameter indices), ``low``/``high`` (per parameter),
    ``raw`` (λ before clamping), ``adam`` (state or ``None``), ``lr``, ``clamp``,
    ``batches_per_task``, ``batch_size`` and ``seed``. Returns the new ``raw``, ``adam`` and
    ``step``, the effective ``coefficients``, the per-task ``entropy`` on the objectives'
    subsets, the objectives' ``metrics`` and timings.
    """
    import torch
    from torch.func import functional_call

    from mergesweep.objectives.classification import prediction_entropy
    from mergesweep.plan import MergePlan

    pool, method = evaluator.pool, evaluator.method
    tasks = list(evaluator.objectives)
    inputs = _inputs(evaluator)
    index = torch.as_tensor(np.asarray(req["index"]), device=pool.live.device)
    low = torch.tensor(req["low"], dtype=torch.float32, device=pool.live.device)
    high = torch.tensor(req["high"], dtype=torch.float32, device=pool.live.device)
    raw = torch.tensor(req["raw"], dtype=torch.float32, device=pool.live.device)
    raw.requires_grad_(True)
    opt = _adam(raw, req["lr"], req["adam"])
    calls = {
        t: _Call(pool.model(evaluator.heads[t]), evaluator.objectives[t].logits) for t in tasks
    }
    names = pool.layout.names
    start = time.perf_counter()
    end, per_task, loss_value = req["step"] + req["n"], req["batches_per_task"], float("nan")
    with torch.enable_grad():
        for step in range(req["step"], end):
            lam = torch.clamp(raw, low, high) if req["clamp"] else raw
            merged = method.functional(pool, lam[index])
            params = {f"model.{n}": merged[n] for n in names}
            loss = raw.new_zeros(())
            for k, t in enumerate(tasks):
                rng = np.random.default_rng([req["seed"], step, k])
                for batch in _minibatches(
                    inputs[t], rng, req["batches_per_task"], req["batch_size"]
                ):
                    logits = functional_call(calls[t], params, (batch,))
                    loss = loss + prediction_entropy(logits.float()).mean() / per_task
            (grad,) = torch.autograd.grad(loss, raw)
            raw.grad = grad
            opt.step()
            raw.grad = None
            if not req["clamp"]:  # projected steps: λ stays in the space's bounds
                with torch.no_grad():
                    raw.copy_(torch.clamp(raw, low, high))
            loss_value = float(loss.detach())
    steps_s = time.perf_counter() - start
    coeffs = torch.clamp(raw.detach(), low, high)
    state = opt.state_dict()["state"].get(0)
    out: dict[str, Any] = {
        "step": end,
        "raw": raw.detach().cpu().tolist(),
        "adam": req["adam"]
        if state is None  # no step taken
        else {
            "step": float(state["step"]),
            "exp_avg": state["exp_avg"].cpu().tolist(),
            "exp_avg_sq": state["exp_avg_sq"].cpu().tolist(),
        },
        "coefficients": coeffs.cpu().tolist(),
        "train_entropy": loss_value,
    }
    t0 = time.perf_counter()
    method.apply(pool, MergePlan(coeffs[index].double().cpu().numpy()))
    entropy, metrics = {}, {}
    with torch.inference_mode():
        for t, obj in evaluator.objectives.items():
            model = pool.model(evaluator.heads[t])
            total, count = 0.0, 0
            for batch in inputs[t]:
                h = prediction_entropy(obj.logits(model, batch).float())
                total, count = total + float(h.sum()), count + h.shape[0]
            entropy[t] = total / max(count, 1)
    for t, obj in evaluator.objectives.items():
        metrics[t] = float(obj.evaluate(pool.model(evaluator.heads[t])))
    out.update(entropy=entropy, metrics=metrics)
    out["timings"] = {"steps_s": steps_s, "eval_s": time.perf_counter() - t0}
    return out


# -- the driver side ----------------------------------------------------------------------------
def _check(value: Any, key: str, *, low: float, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < low:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"searcher.options.{key}: expected {kind} ≥ {low}, got {value!r}")
    return value if integer else float(value)


class AdaMerging(Searcher):
    """Entropy-gradient search of merge coefficients (the run is recorded as trials).

    Args:
        steps: Adam steps in all (paper: 500; FusionBench: 1000).
        lr: Adam's learning rate (paper: 1e-3; 1e-4 for GPT-2).
        batches_per_task: minibatches of every task per step (paper: 2).
        batch_size: inputs per minibatch (paper: 16).
        clamp: clamp λ to the space's bounds in the forward pass (the paper's [0, 1]); with
            ``false`` λ is used as is and projected onto the bounds after each step (widen the
            space's ``low``/``high`` for FusionBench's unclamped variant).
        record_every: steps between recorded trials (the last step is always recorded).

    The start point is the space's ``init`` (0.3 by default, as in the paper). ``budget.trials``
    is not used: the run is ``steps`` long; it occupies one worker.
    """

    name = "adamerging"
    multi_objective = True

    def __init__(
        self,
        *,
        steps: int = 500,
        lr: float = 1e-3,
        batches_per_task: int = 2,
        batch_size: int = 16,
        clamp: bool = True,
        record_every: int = 50,
    ) -> None:
        self.steps = _check(steps, "steps", low=1, integer=True)
        self.lr = _check(lr, "lr", low=0.0)
        self.batches_per_task = _check(batches_per_task, "batches_per_task", low=1, integer=True)
        self.batch_size = _check(batch_size, "batch_size", low=1, integer=True)
        if not isinstance(clamp, bool):
            raise ConfigError(f"searcher.options.clamp: expected true or false, got {clamp!r}")
        self.clamp = clamp
        self.record_every = _check(record_every, "record_every", low=1, integer=True)

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        coefficient_index(ctx.space)  # refuse an unsuitable space before any weight loads
        # Not used for choosing points (drive does that); the study still needs a sampler.
        return optuna.samplers.RandomSampler(seed=ctx.seed)

    def options(self) -> dict[str, Any]:
        keys = ("steps", "lr", "batches_per_task", "batch_size", "clamp", "record_every")
        return {k: getattr(self, k) for k in keys}

    @staticmethod
    def last_record(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
        """The recorded trial with the most steps (``None`` before the first record)."""
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        recs = [t for t in study.get_trials(deepcopy=False, states=states) if ATTR in t.user_attrs]
        return max(recs, key=lambda t: t.user_attrs[ATTR]["step"], default=None)

    def drive(self, setup: StudySetup, executor: Executor, budget: int) -> bool:
        space = setup.space
        index = coefficient_index(space)
        last = self.last_record(setup.study)
        if last is not None and last.user_attrs[ATTR].get("final"):
            return True
        if last is None:
            step, raw, adam = 0, [p.init for p in space.params], None
        else:
            rec = last.user_attrs[ATTR]
            step, raw, adam = rec["step"], rec["raw"], rec["adam"]
        bar = _progress(self.steps, step, setup.cfg.name)
        try:
            while step < self.steps:
                req = {
                    "index": index.tolist(),
                    "low": [p.low for p in space.params],
                    "high": [p.high for p in space.params],
                    "raw": raw,
                    "adam": adam,
                    "step": step,
                    "n": min(self.record_every, self.steps - step),
                    "lr": self.lr,
                    "clamp": self.clamp,
                    "batches_per_task": self.batches_per_task,
                    "batch_size": self.batch_size,
                    "seed": setup.cfg.seed,
                }
                out = executor.call(adamerging_steps, req)
                step, raw, adam = out["step"], out["raw"], out["adam"]
                self._record(setup, out, final=step >= self.steps)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=step)
        finally:
            if bar is not None:
                bar.stop()
        return True

    def _record(self, setup: StudySetup, out: dict[str, Any], *, final: bool) -> None:
        from mergesweep.driver import study_values

        space = setup.space
        params = {
            p.name: min(max(float(v), p.low), p.high)  # float32 → the float64 bounds
            for p, v in zip(space.params, out["coefficients"])
        }
        entropy = out["entropy"]
        attrs = {
            ATTR: {"step": out["step"], "raw": out["raw"], "adam": out["adam"], "final": final},
            "metrics": out["metrics"],
            "entropy": entropy,
            "train_entropy": out["train_entropy"],
            "timings": out["timings"],
            "plan": space.to_plan(params).summary(setup.layout.experts),
        }
        total = float(sum(entropy.values()))
        values = None
        state = TrialState.PRUNED
        if final:
            values = study_values(setup, out["metrics"], params)
            if all(math.isfinite(v) for v in values):
                state = TrialState.COMPLETE
            else:
                attrs["fail_reason"] = f"non-finite study value {values}"
                values, state = None, TrialState.FAIL
        setup.study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params=params,
                distributions=distributions(space),
                values=values,
                intermediate_values={out["step"]: total} if math.isfinite(total) else None,
                user_attrs=attrs,
            )
        )


def _progress(total: int, done: int, name: str):
    """A rich progress bar over steps on a terminal, else ``None``."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    bar = Progress(transient=False)
    bar.add_task(f"{name} (adamerging steps)", total=total, completed=done)
    bar.start()
    return bar
