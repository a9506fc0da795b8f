"""Fisher-weighted averaging (Matena & Raffel, 2022): θ = Σₖ λₖ Fₖ⊙θₖ / Σₖ λₖ Fₖ.

Fₖ is the diagonal Fisher of expert k on its own task's data,
E_x E_{y~p(y|x)} (∇ log p(y|x))², from per-sample gradients, floored at 1e-6. It is computed
once in ``prepare`` from ``PrepareContext.batches[task]()`` and ``PrepareContext.logits[task]``
on the task's live model with the live weights temporarily set to θₖ. Since
Σₖ λₖFₖθ₀ / Σₖ λₖFₖ = θ₀, a trial computes θ = θ₀ + Σₖ λₖFₖτₖ / Σₖ λₖFₖ chunk by chunk.
Tensors that are buffers, not parameters, have no gradient: their Fisher is the floor (a plain
λ-weighted average).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from mergesweep.errors import ConfigError, ObjectiveError
from mergesweep.merge.base import MergeMethod, PrepareContext
from mergesweep.merge.kernels import Scratch
from mergesweep.merge.linear import check_plan
from mergesweep.merge.topk import MASK_CHUNK, require_prepared
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool

__all__ = ["FLOOR", "Fisher", "diagonal_fisher"]

FLOOR = 1e-6


def _single(batch: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    return {
        k: v[b : b + 1] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in batch.items()
    }


def _batch_size(batch: dict[str, torch.Tensor]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim():
            return v.shape[0]
    raise ObjectiveError("objectives: a batch for the Fisher holds no batched tensor")


def diagonal_fisher(
    model: nn.Module,
    params: list[torch.Tensor],
    batches: Iterable[dict[str, torch.Tensor]],
    logits_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    *,
    samples: int,
    exact: bool,
    generator: torch.Generator,
    task: str,
) -> list[torch.Tensor]:
    """Mean over ≤ ``samples`` examples of E_y (∇ log p(y|x))², per tensor of ``params``.

    Args:
        params: the parameters to differentiate (``requires_grad`` set).
        exact: weight every class's squared gradient by p(y|x) (C backward passes per example)
            instead of sampling one y from p(y|x) with ``generator``.

    Returns:
        Per entry of ``params`` the float32 Fisher diagonal (not floored).
    """
    acc = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    count = 0
    for batch in batches:
        for b in range(_batch_size(batch)):
            if count >= samples:
                break
            logits = logits_fn(model, _single(batch, b))
            if logits.dim() != 2 or logits.shape[0] != 1:
                raise ObjectiveError(
                    f"objectives: the logits for task {task} must be (batch, classes); got a "
                    f"{list(logits.shape)} tensor for one example"
                )
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            probs = logp.detach().exp()
            if exact:
                terms = [(y, float(probs[y])) for y in range(logp.shape[0])]
            else:
                terms = [(int(torch.multinomial(probs.cpu(), 1, generator=generator)), 1.0)]
            for j, (y, w) in enumerate(terms):
                grads = torch.autograd.grad(
                    logp[y], params, retain_graph=j < len(terms) - 1, allow_unused=True
                )
                for a, g in zip(acc, grads):
                    if g is not None:
                        a.add_(g.float().square(), alpha=w)
            count += 1
        if count >= samples:
            break
    if count == 0:
        raise ConfigError(f"method.name: fisher got no examples from the data of task {task}")
    return [a.div_(count) for a in acc]


class Fisher(MergeMethod):
    """Fisher-weighted averaging with per-tensor, per-expert coefficients.

    Args:
        samples: examples per task for the Fisher (the paper uses ~256).
        exact: exact expectation over classes (default) or one sampled class per example.

    Example:
        >>> Fisher(samples=64, exact=False).samples
        64
    """

    name = "fisher"

    def __init__(self, *, samples: int = 256, exact: bool = True) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(
                f"method.options.samples: expected a positive integer, got {samples!r}"
            )
        if not isinstance(exact, bool):
            raise ConfigError(f"method.options.exact: expected true or false, got {exact!r}")
        self.samples, self.exact = samples, exact
        self.fisher: torch.Tensor | None = None  # (N, P) float32 after prepare
        self._scratch = Scratch()
        self._pool: ModelPool | None = None

    def prepare(self, pool: ModelPool, context: PrepareContext) -> None:
        """Compute every expert's floored diagonal Fisher on its own task's data."""
        for task in pool.experts:
            if task not in context.batches or task not in context.logits:
                raise ConfigError(f"method.name: fisher needs objective data for task {task}")
        N, P = pool.tau.shape
        fisher = torch.full((N, P), FLOOR, dtype=torch.float32, device=pool.live.device)
        saved = pool.live.clone()
        try:
            for k, task in enumerate(pool.experts):
                pool.live.copy_(pool.base).add_(pool.tau[k])  # θₖ
                self._expert_fisher(pool, context, k, task, fisher[k])
        finally:
            pool.live.copy_(saved)
        self.fisher = fisher
        self._pool = pool

    def _expert_fisher(
        self, pool: ModelPool, context: PrepareContext, k: int, task: str, out: torch.Tensor
    ) -> None:
        model = pool.model(task)
        tensors = pool.merged_tensors(task)
        where = [i for i, t in enumerate(tensors) if isinstance(t, nn.Parameter)]
        params = [tensors[i] for i in where]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        gen = torch.Generator().manual_seed(context.seed * 1_000_003 + k)
        try:
            with torch.enable_grad():
                diag = diagonal_fisher(
                    model,
                    params,
                    context.batches[task](),
                    context.logits[task],
                    samples=self.samples,
                    exact=self.exact,
                    generator=gen,
                    task=task,
                )
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
        for i, f in zip(where, diag):
            pool.flat_view(out, i).copy_(f.clamp_(min=FLOOR))

    def apply(self, pool: ModelPool, plan: MergePlan) -> None:
        check_plan(pool, plan)
        require_prepared(self, pool)
        assert self.fisher is not None  # set with _pool
        out, base, tau, fisher = pool.live, pool.base, pool.tau, self.fisher
        N = tau.shape[0]
        lam_all = torch.as_tensor(plan.coefficients, dtype=torch.float32, device=out.device)
        offs = pool.layout.offsets
        for i in range(pool.layout.num_tensors):
            lam = lam_all[i]
            lo, hi = offs[i], offs[i + 1]
            chunk = max(hi - lo, 1) if out.is_cuda else MASK_CHUNK
            for s in range(lo, hi, chunk):
                e = min(s + chunk, hi)
                f = fisher[:, s:e]
                x = self._scratch.get("x", (N, e - s), out, torch.float32)
                num = self._scratch.get("num", (e - s,), out, torch.float32)
                den = self._scratch.get("den", (e - s,), out, torch.float32)
                torch.mul(f, tau[:, s:e], out=x)
                torch.mv(x.T, lam, out=num)
                torch.mv(f.T, lam, out=den)
                # Σλₖ = 0 (or λ of mixed signs cancelling) has no weighted mean: keep θ₀ there.
                num.div_(den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                torch.add(base[s:e], num, out=out[s:e])

    def functional(self, pool: ModelPool, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable Fisher-weighted merge in the coefficients (Fisher fixed)."""
        require_prepared(self, pool)
        assert self.fisher is not None
        out: dict[str, torch.Tensor] = {}
        for i, n in enumerate(pool.layout.names):
            a, b = pool.layout.offsets[i], pool.layout.offsets[i + 1]
            f = self.fisher[:, a:b]
            lam = coefficients[i].to(torch.float32).view(-1, 1)
            merged = (lam * f * pool.tau[:, a:b].float()).sum(0) / (lam * f).sum(0)
            base = pool.flat_view(pool.base, i)
            out[n] = base + merged.view(base.shape).to(base.dtype)
        return out
