"""Bandwidth-bound kernels over flat buffers.

Per trial a linear merge must read θ₀ and each τₖ once and write θ once: (N + 2)·P elements of
memory traffic. Task vectors live in one ``(N, P)`` buffer, so a range of the merge is one
``addmv`` of the transposed ``(P, N)`` slice with the coefficient vector: a single streaming pass
(measured at ~0.9 of STREAM triad bandwidth on 2 CPU cores, where a loop of ``add_`` over the
experts re-reads the output N times and reaches ~0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["CHUNK", "Scratch", "linear_range", "triad"]

CHUNK = 1 << 20  # elements per addmv call: long enough to amortise the call, short for scratch


class Scratch:
    """Reusable chunk-sized buffers (allocated once per worker, never per trial)."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, tag: str, shape: tuple[int, ...], like: torch.Tensor, dtype=None) -> torch.Tensor:
        dtype = dtype or like.dtype
        key = (tag, dtype, like.device)
        buf = self._bufs.get(key)
        n = int(np.prod(shape))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype, device=like.device)
            self._bufs[key] = buf
        return buf[:n].view(shape)


_SCRATCH = Scratch()


def linear_range(
    out: torch.Tensor,
    base: torch.Tensor,
    tau: torch.Tensor,
    coeffs: Sequence[float] | np.ndarray,
    lo: int,
    hi: int,
    chunk: int = CHUNK,
) -> None:
    """``out[lo:hi] = base[lo:hi] + Σₖ coeffs[k]·tau[k, lo:hi]`` without model-sized temporaries."""
    lam = torch.as_tensor(np.asarray(coeffs, dtype=np.float64), dtype=out.dtype, device=out.device)
    if out.is_cuda:  # one launch per range: the GPU needs big kernels, not cache blocking
        chunk = max(hi - lo, 1)
    if out.dtype == torch.bfloat16 and tau.dtype == out.dtype and not out.is_cuda:
        # CPU bfloat16 addmv is a slow reference loop (0.1–0.2 of a triad); the same sum as a
        # (1, N) × (N, chunk) addmm goes through oneDNN with float32 accumulation (0.4–0.76).
        row = lam[None]
        for s in range(lo, hi, chunk):
            e = min(s + chunk, hi)
            torch.addmm(base[s:e][None], row, tau[:, s:e], out=out[s:e][None])
        return
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        t = tau[:, s:e]
        if t.dtype != out.dtype:  # bf16/fp16 task vectors: widen one chunk at a time
            wide = _SCRATCH.get("widen", tuple(t.shape), out)
            t = wide.copy_(t)
        torch.addmv(base[s:e], t.T, lam, out=out[s:e])


def triad(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scalar: float = 3.0) -> None:
    """STREAM triad ``a = b + scalar·c`` (the bandwidth reference: 3 arrays of traffic)."""
    torch.add(b, c, alpha=scalar, out=a)
