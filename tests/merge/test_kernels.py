"""The bandwidth kernels: the same sums as a float64 reference, in every dtype layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergesweep.merge import kernels, native
from mergesweep.merge.kernels import KERNELS, linear_range

_LAYOUTS = [
    (torch.float32, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16),
]


@pytest.mark.parametrize("experts", [1, 2, 3, 8])
@pytest.mark.parametrize(
    ("kernel", "model", "tau"),
    # addmm takes task vectors in the weights' dtype only
    [(k, m, t) for k in [None, *KERNELS] for m, t in _LAYOUTS if k != "addmm" or m == t],
)
def test_linear_range_matches_a_float64_sum(kernel, experts, model, tau) -> None:
    """Every kernel (None: the one tuned for this CPU) in every layout it takes."""
    if kernel == "native" and native.library() is None:
        pytest.skip("the C kernel cannot be built here (no C compiler)")
    g = torch.Generator().manual_seed(experts)
    n, chunk, lo, hi = 10_000, 1_024, 37, 9_001  # several chunks and a ragged last one
    base = torch.randn(n, generator=g).to(model)
    vecs = (0.05 * torch.randn(experts, n, generator=g)).to(tau)
    coeffs = np.linspace(-0.5, 1.25, experts)
    out = torch.full((n,), 7.0, dtype=model)
    linear_range(out, base, vecs, coeffs, lo, hi, chunk=chunk, kernel=KERNELS.get(kernel))
    # λ is rounded to the model's dtype, as the kernel does; the sum is then exact in float64.
    lam = torch.as_tensor(coeffs).to(model).double()
    want = base.double()[lo:hi] + lam @ vecs.double()[:, lo:hi]
    got = out.double()
    tol = 1e-6 if model == torch.float32 else 2**-8  # one bfloat16 rounding of values ~ 1
    assert torch.allclose(got[lo:hi], want, rtol=tol, atol=tol)
    assert torch.all(got[:lo] == 7.0) and torch.all(got[hi:] == 7.0)  # nothing outside


def test_the_tuned_kernel_is_timed_once_per_layout_and_expert_count() -> None:
    kernels._CHOSEN.clear()
    for experts in (2, 2, 3):
        out, tau = torch.empty(8, dtype=torch.bfloat16), torch.zeros(experts, 8).bfloat16()
        linear_range(out, torch.zeros(8).bfloat16(), tau, [0.5] * experts, 0, 8)
        assert torch.all(out == 0)
    chosen = {k[-1]: v for k, v in kernels._CHOSEN.items()}
    assert sorted(chosen) == [2, 3]
    for fn, chunk in chosen.values():
        assert (fn, chunk) in kernels._options("low", out, tau)


@pytest.mark.parametrize(("model", "tau_dtype"), _LAYOUTS)
def test_the_c_kernel_rounds_like_torch(model, tau_dtype) -> None:
    """Bit for bit what torch gives for the same float32 sums: round-to-nearest-even into
    bfloat16 (ties included), NaN and infinities kept, several blocks and a ragged tail."""
    if native.library() is None:
        pytest.skip("the C kernel cannot be built here (no C compiler)")
    g = torch.Generator().manual_seed(0)
    n = 5_000  # 2 blocks of 2048 and a tail
    base = torch.randn(n, generator=g).bfloat16().to(model)
    base[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    tau = torch.randn(3, n, generator=g).to(tau_dtype)
    tau[:, 4:260] = torch.arange(256).to(tau_dtype) * 2.0**-9  # exact ties at bfloat16 spacing
    lam = torch.tensor([1.0, -0.5, 0.25]).to(model)
    out = torch.empty(n, dtype=model)
    native.merge_range(out, base, tau, lam, 0, n)
    acc = base.float().clone()
    for k in range(3):
        acc.add_(tau[k].float(), alpha=float(lam[k]))
    want = acc.to(model)
    same = (out == want) | (out.isnan() & want.isnan())
    assert bool(same.all()), int((~same).sum())
    assert out[0].isnan() and out[1] == float("inf") and out[2] == -float("inf")


def test_the_c_kernel_is_a_tuning_candidate_where_it_builds(monkeypatch) -> None:
    out, tau = torch.empty(8, dtype=torch.bfloat16), torch.zeros(2, 8).bfloat16()
    names = [fn.__name__ for fn, _ in kernels._options("low", out, tau)]
    assert ("_native" in names) == (native.library() is not None)
    monkeypatch.setenv("MERGESWEEP_NATIVE", "0")
    assert "_native" not in [fn.__name__ for fn, _ in kernels._options("low", out, tau)]
