"""The bandwidth kernels: the same sums as a float64 reference, in every dtype layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergesweep.merge.kernels import linear_range


@pytest.mark.parametrize("experts", [1, 2, 3, 8])
@pytest.mark.parametrize(
    ("model", "tau"),
    [
        (torch.float32, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_linear_range_matches_a_float64_sum(experts, model, tau) -> None:
    g = torch.Generator().manual_seed(experts)
    n, chunk, lo, hi = 10_000, 1_024, 37, 9_001  # several chunks and a ragged last one
    base = torch.randn(n, generator=g).to(model)
    vecs = (0.05 * torch.randn(experts, n, generator=g)).to(tau)
    coeffs = np.linspace(-0.5, 1.25, experts)
    out = torch.full((n,), 7.0, dtype=model)
    linear_range(out, base, vecs, coeffs, lo, hi, chunk=chunk)
    # λ is rounded to the model's dtype, as the kernel does; the sum is then exact in float64.
    lam = torch.as_tensor(coeffs).to(model).double()
    want = base.double()[lo:hi] + lam @ vecs.double()[:, lo:hi]
    got = out.double()
    tol = 1e-6 if model == torch.float32 else 2**-8  # one bfloat16 rounding of values ~ 1
    assert torch.allclose(got[lo:hi], want, rtol=tol, atol=tol)
    assert torch.all(got[:lo] == 7.0) and torch.all(got[hi:] == 7.0)  # nothing outside
