"""DF-Merge (Lee et al., NAACL 2025): merging with a coefficient-conditioned diagonal Fisher.

Per trial, for every expert i with coefficient λᵢ (per tensor where the plan has them):

* θᵢ(λᵢ) = θ₀ + λᵢτᵢ is written into the live weights and Fᵢ, the diagonal Fisher of task i's
  model (its own head) at θᵢ(λᵢ), is computed on a fixed subset of ``samples`` examples of that
  task's data (drawn once with the study seed, reused by every trial):
  Fᵢ = E_x Σ_y p(y|x) (∇ log p(y|x))² (exact expectation over classes), + ``eps``;
* θ = θ₀ + M · [Σᵢ Fᵢ ⊙ λᵢτᵢ] ⊘ [Σᵢ Fᵢ] with M the number of experts.

With equal Fisher everywhere this is task arithmetic θ₀ + Σᵢ λᵢτᵢ; ``fisher=False`` is exactly
that (the paper's ablation). The Fisher depends on λ, so it is recomputed at every ``apply``, on
the worker that evaluates the trial: N·samples·C backward passes (C classes), the method's cost.
Tensors that are buffers, not parameters, get no gradient: their Fisher is ``eps`` for every
expert, i.e. task arithmetic there.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mergesweep.errors import ConfigError, ObjectiveError
from mergesweep.merge.base import MergeMethod, PrepareContext
from mergesweep.merge.linear import TaskArithmetic, check_plan
from mergesweep.merge.topk import require_prepared
from mergesweep.plan import MergePlan, segments
from mergesweep.pool import ModelPool

__all__ = ["EPS", "DFMerge", "fixed_examples"]

EPS = 1e-12  # added to every Fᵢ, as in the reference code
# Per-example Jacobians (classes × merged parameters) are batched up to this many bytes.
VMAP_BYTES = 256 * 2**20

logger = logging.getLogger(__name__)

Example = dict[str, torch.Tensor]
LogitsFn = Callable[[nn.Module, Example], torch.Tensor]


def _rows(batch: Example) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim():
            return v.shape[0]
    raise ObjectiveError("objectives: a batch for the Fisher holds no batched tensor")


def _log_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise ObjectiveError(
            f"objectives: the logits for task {task} must be (batch, classes); got a "
            f"{list(logits.shape)} tensor for one example"
        )
    return torch.log_softmax(logits.float(), dim=-1)


class _Call(nn.Module):
    """``logits_fn(model, batch)`` as a module, so ``functional_call`` can swap its tensors."""

    def __init__(self, model: nn.Module, logits_fn: LogitsFn) -> None:
        super().__init__()
        self.model = model
        self.logits_fn = logits_fn

    def forward(self, batch: Example) -> torch.Tensor:
        return self.logits_fn(self.model, batch)


def _fisher_vmap(
    model: nn.Module,
    logits_fn: LogitsFn,
    names: list[str],
    tensors: list[torch.Tensor],
    where: list[int],
    examples: list[Example],
    weights: torch.Tensor,
    targets: list[torch.Tensor],
    chunk: int,
) -> None:
    """``targets += Σₓ Σ_y w[x, y] (∇ log p(y|x))²``: per-example Jacobians with ``torch.func``.

    Examples are stacked by shape (padded text batches differ in length) and Jacobians are
    taken ``chunk`` examples at a time, bounding memory at ~:data:`VMAP_BYTES`.
    """
    from torch.func import functional_call, jacrev, vmap

    call = _Call(model, logits_fn)
    values = {f"model.{n}": tensors[i].detach() for n, i in zip(names, where)}

    def logp(params: dict[str, torch.Tensor], x: Example) -> torch.Tensor:
        one = {key: v.unsqueeze(0) for key, v in x.items()}
        return torch.log_softmax(functional_call(call, params, (one,))[0].float(), -1)

    jac = vmap(jacrev(logp), in_dims=(None, 0), chunk_size=chunk)
    groups: dict[tuple, list[int]] = {}
    for j, x in enumerate(examples):
        sig = tuple((key, tuple(v.shape)) for key, v in x.items())
        groups.setdefault(sig, []).append(j)
    for rows in groups.values():
        for s in range(0, len(rows), chunk):
            part = rows[s : s + chunk]
            batch = {key: torch.cat([examples[j][key] for j in part]) for key in examples[part[0]]}
            with warnings.catch_warnings():  # "no batching rule for sdpa": slower, still right
                warnings.simplefilter("ignore", UserWarning)
                J = jac(values, batch)
            w = weights[part].view(len(part), -1, 1)
            for n, t in zip(names, targets):
                # detach: the head (not swapped in) still requires grad
                g = J[f"model.{n}"].detach().float().reshape(len(part), w.shape[1], -1)
                t.view(-1).add_((w * g.square()).sum((0, 1)))


def fixed_examples(batches, samples: int, seed: int) -> list[Example]:
    """``samples`` single examples drawn once, seeded, from every row of ``batches``.

    Each example is a batch of one (the Fisher needs per-sample gradients); fewer rows than
    ``samples`` keeps them all.
    """
    rows = []
    for batch in batches:
        for b in range(_rows(batch)):
            rows.append(
                {
                    k: v[b : b + 1] if isinstance(v, torch.Tensor) and v.dim() else v
                    for k, v in batch.items()
                }
            )
    if len(rows) > samples:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), samples, replace=False))
        rows = [rows[i] for i in pick]
    return rows


class DFMerge(MergeMethod):
    """DF-Merge with per-tensor, per-expert coefficients (the paper searches one λ per model).

    Args:
        samples: examples per task for the Fisher, fixed for the study (paper: 30).
        fisher: ``False`` drops the Fisher: task arithmetic with the same λ (ablation).
        exact: exact expectation over classes (default) or one class sampled from p(y|x) per
            example (the same seeded draws every trial, so a trial stays reproducible).
        eps: added to every expert's Fisher before the weighted mean.

    Example:
        >>> DFMerge(samples=30).name
        'dfmerge'
    """

    name = "dfmerge"

    def __init__(
        self, *, samples: int = 30, fisher: bool = True, exact: bool = True, eps: float = EPS
    ) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(
                f"method.options.samples: expected a positive integer, got {samples!r}"
            )
        for key, value in (("fisher", fisher), ("exact", exact)):
            if not isinstance(value, bool):
                raise ConfigError(f"method.options.{key}: expected true or false, got {value!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ConfigError(f"method.options.eps: expected a positive number, got {eps!r}")
        self.samples, self.use_fisher, self.exact, self.eps = samples, fisher, exact, float(eps)
        self._linear = TaskArithmetic()
        self._pool: ModelPool | None = None
        self._examples: dict[str, list[Example]] = {}
        self._logits: dict[str, LogitsFn] = {}
        self._seed = 0
        self._batched = True  # per-example Jacobians with torch.func, else a backward per class
        self.last_fisher: torch.Tensor | None = None  # (P,) Fᵢ of the last expert (tests)

    # -- prepare ---------------------------------------------------------------------------
    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:
        """Draw each task's fixed Fisher subset and allocate the per-trial accumulators."""
        self._pool = pool
        self._seed = context.seed
        if not self.use_fisher:
            return
        for k, task in enumerate(pool.experts):
            if task not in context.batches or task not in context.logits:
                raise ConfigError(
                    f"method.name: dfmerge needs objective data for task {task} (an objective "
                    f"whose head is '{task}', e.g. accuracy on its validation split)"
                )
            examples = fixed_examples(
                context.batches[task](), self.samples, context.seed * 1_000_003 + k
            )
            if not examples:
                raise ConfigError(f"method.name: dfmerge got no examples for task {task}")
            self._examples[task] = examples
            self._logits[task] = context.logits[task]
        P = pool.layout.num_params
        dev = pool.live.device
        # Allocated once per worker: no model-sized allocation per trial besides autograd's.
        self._num = torch.zeros(P, dtype=torch.float32, device=dev)
        self._den = torch.zeros(P, dtype=torch.float32, device=dev)
        self._fisher = torch.zeros(P, dtype=torch.float32, device=dev)

    # -- apply -----------------------------------------------------------------------------
    def apply(self, pool: ModelPool, plan: MergePlan) -> None:
        check_plan(pool, plan)
        require_prepared(self, pool)
        if not self.use_fisher:
            self._linear.apply(pool, plan)
            return
        num, den, fisher = self._num, self._den, self._fisher
        num.zero_()
        den.zero_()
        offs = pool.layout.offsets
        for k, task in enumerate(pool.experts):
            col = plan.coefficients[:, k : k + 1]
            runs = segments(col)
            for a, b in runs:  # live = θᵢ(λᵢ) = θ₀ + λᵢτᵢ
                lo, hi = offs[a], offs[b]
                torch.add(
                    pool.base[lo:hi],
                    pool.tau[k, lo:hi],
                    alpha=float(col[a, 0]),
                    out=pool.live[lo:hi],
                )
            self._expert_fisher(pool, k, task, fisher)
            fisher.add_(self.eps)
            for a, b in runs:  # Σ Fᵢ ⊙ λᵢτᵢ and Σ Fᵢ
                lo, hi = offs[a], offs[b]
                num[lo:hi].addcmul_(fisher[lo:hi], pool.tau[k, lo:hi], value=float(col[a, 0]))
            den.add_(fisher)
        self.last_fisher = fisher
        # θ = θ₀ + M · num ⊘ den, written in place (num is reused as the quotient)
        num.div_(den).mul_(pool.layout.num_experts)
        torch.add(pool.base, num.to(pool.live.dtype), out=pool.live)

    def _expert_fisher(self, pool: ModelPool, k: int, task: str, out: torch.Tensor) -> None:
        """``out`` ← Fᵢ (no eps) of ``task``'s model at the current live weights."""
        out.zero_()
        model = pool.model(task)
        tensors = pool.merged_tensors(task)
        where = [i for i, t in enumerate(tensors) if isinstance(t, nn.Parameter)]
        targets = [pool.flat_view(out, i) for i in where]
        examples, logits_fn = self._examples[task], self._logits[task]
        with torch.no_grad():  # p(y|x) of every example, and the sampled classes if not exact
            probs = torch.cat([_log_probs(logits_fn(model, x), task).exp() for x in examples])
        if self.exact:
            weights = probs
        else:
            gen = torch.Generator().manual_seed(self._seed * 1_000_003 + k)
            ys = torch.multinomial(probs.cpu().float(), 1, generator=gen).to(probs.device)
            weights = torch.zeros_like(probs).scatter_(1, ys, 1.0)
        names = [pool.layout.names[i] for i in where]
        per_example = probs.shape[1] * sum(t.numel() for t in targets) * 4
        if self._batched and per_example <= VMAP_BYTES:
            try:
                chunk = max(1, VMAP_BYTES // per_example)
                _fisher_vmap(
                    model, logits_fn, names, tensors, where, examples, weights, targets, chunk
                )
                out.div_(len(examples))
                return
            except Exception as exc:  # an op without a vmap rule: per-example loop from now on
                logger.info("dfmerge: batched Fisher unavailable (%s); using the loop", exc)
                self._batched = False
                out.zero_()
        params = [tensors[i] for i in where]
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(True)
            with torch.enable_grad():
                for x, w in zip(examples, weights):
                    logp = _log_probs(logits_fn(model, x), task)[0]
                    used = [y for y in range(logp.shape[0]) if w[y] > 0]
                    for j, y in enumerate(used):
                        grads = torch.autograd.grad(
                            logp[y], params, retain_graph=j < len(used) - 1, allow_unused=True
                        )
                        for t, g in zip(targets, grads):
                            if g is not None:
                                t.addcmul_(g.float(), g.float(), value=float(w[y]))
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
        out.div_(len(examples))

    # -- differentiable path -----------------------------------------------------------------
    def functional(self, pool: ModelPool, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """DF-Merge at ``coefficients`` with each Fᵢ held constant in the gradient.

        The Fisher is computed at the detached coefficients (as :meth:`apply` does); gradients
        flow through λᵢτᵢ only.
        """
        require_prepared(self, pool)
        if not self.use_fisher:
            return super().functional(pool, coefficients)
        saved = pool.live.clone()
        lam_np = coefficients.detach().double().cpu().numpy()
        fishers = []
        try:
            for k, task in enumerate(pool.experts):
                for i in range(pool.layout.num_tensors):
                    torch.add(
                        pool.flat_view(pool.base, i),
                        pool.flat_view(pool.tau[k], i),
                        alpha=float(lam_np[i, k]),
                        out=pool.flat_view(pool.live, i),
                    )
                f = torch.zeros_like(self._fisher)
                self._expert_fisher(pool, k, task, f)
                fishers.append(f.add_(self.eps))
        finally:
            pool.live.copy_(saved)
        F = torch.stack(fishers)  # (N, P)
        M = pool.layout.num_experts
        out: dict[str, torch.Tensor] = {}
        for i, n in enumerate(pool.layout.names):
            a, b = pool.layout.offsets[i], pool.layout.offsets[i + 1]
            lam = coefficients[i].to(torch.float32).view(-1, 1)
            f = F[:, a:b]
            merged = M * (f * lam * pool.tau[:, a:b].float()).sum(0) / f.sum(0)
            base = pool.flat_view(pool.base, i)
            out[n] = base + merged.view(base.shape).to(base.dtype)
        return out
