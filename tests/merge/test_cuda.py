"""Every merge method gives on a CUDA pool the weights it gives on the CPU (needs a GPU).

The CUDA branches (one launch per range, ``kthvalue`` thresholds, a tensor-sized TIES scratch,
Fisher on the GPU) run nowhere else: CI has no GPU, so these run on a lent machine through
``benchmarks/device_run.sh`` and skip here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mergesweep.merge import METHODS, build_method
from mergesweep.pool import ModelPool

from .conftest import bert_context

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device (GPU tests run on a lent GPU machine: benchmarks/device_run.sh)",
    ),
]

OPTIONS = {"fisher": {"samples": 4}, "magnitude": {"density": 0.5}}
# Methods whose weights come from gradients (Fisher): float32 sums in another order.
GRADIENT_BASED = {"fisher", "dfmerge"}


def _merged(spec, name: str, device: str, plans: list) -> list[torch.Tensor]:
    pool = ModelPool(dataclasses.replace(spec, device=device))
    assert pool.live.device.type == device
    method = build_method(name, OPTIONS.get(name))
    method.prepare(pool, bert_context(pool))
    out = []
    for p in plans:
        method.apply(pool, p)
        out.append(pool.live.double().cpu())
    return out


@pytest.mark.parametrize("name", METHODS.names())
def test_cuda_merge_matches_the_cpu(name, bert_dirs, plan) -> None:
    spec = bert_dirs(3)
    pool = ModelPool(spec)
    plans = [plan(pool, seed=s, densities=True) for s in (5, 6)]
    cpu = _merged(spec, name, "cpu", plans)
    cuda = _merged(spec, name, "cuda", plans)
    tol = 1e-4 if name in GRADIENT_BASED else 1e-6
    for a, b in zip(cuda, cpu):
        assert (b - pool.base.double()).abs().max() > 1e-3  # the plan merged something
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare_linear"])
def test_cuda_bfloat16_merge_is_within_rounding_of_float32(name, bert_dirs, plan) -> None:
    spec = bert_dirs(3)
    plans = [plan(ModelPool(spec), seed=7, densities=True)]
    (exact,) = _merged(spec, name, "cpu", plans)
    (low,) = _merged(dataclasses.replace(spec, dtype="bfloat16"), name, "cuda", plans)
    # bfloat16 keeps 8 bits of mantissa: each weight within 2⁻⁸ of its float32 merge
    torch.testing.assert_close(low, exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item())


def test_cuda_functional_matches_apply(bert_dirs, plan) -> None:
    """The differentiable path (AdaMerging) on the GPU gives the in-place merge's weights."""
    pool = ModelPool(dataclasses.replace(bert_dirs(2), device="cuda"))
    method = build_method("task_arithmetic")
    method.prepare(pool, bert_context(pool))
    p = plan(pool, seed=8)
    method.apply(pool, p)
    coeffs = torch.tensor(p.coefficients, dtype=torch.float32, device="cuda", requires_grad=True)
    merged = method.functional(pool, coeffs)
    for i, name in enumerate(pool.layout.names):
        assert merged[name].is_cuda
        torch.testing.assert_close(merged[name], pool.flat_view(pool.live, i), rtol=1e-5, atol=1e-6)
    sum(t.square().sum() for t in merged.values()).backward()
    assert coeffs.grad is not None and coeffs.grad.abs().sum() > 0
