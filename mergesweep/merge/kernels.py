"""Bandwidth-bound kernels over flat buffers.

Per trial a linear merge must read θ₀ and each τₖ once and write θ once: (N + 2)·P elements of
memory traffic. Task vectors live in one ``(N, P)`` buffer, so a range of the merge is one
``addmv`` of the transposed ``(P, N)`` slice with the coefficient vector: a single streaming pass
(measured at ~0.9 of STREAM triad bandwidth on 2 CPU cores, where a loop of ``add_`` over the
experts re-reads the output N times and reaches ~0.5). Low-precision layouts (bfloat16 weights,
or bfloat16 task vectors under float32 weights) have several kernels whose speed depends on the
CPU's instructions; the fastest is timed and picked once per process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["CHUNK", "KERNELS", "Scratch", "linear_range", "triad", "tune_kernel"]

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


def _addmm(out, base, tau, lam, lo, hi, chunk) -> None:
    """Same-dtype low precision: a (1, N) × (N, chunk) ``addmm`` per chunk (oneDNN, float32
    accumulation; fast where the CPU has bfloat16 instructions: AVX512-BF16, AMX)."""
    row = lam[None]
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        torch.addmm(base[s:e][None], row, tau[:, s:e], out=out[s:e][None])


def _accumulate(out, base, tau, lam, lo, hi, chunk) -> None:
    """Low-precision weights: a float32 accumulator of one chunk (cache-resident), one ``add_``
    per expert, one rounding into ``out`` (fast on CPUs without bfloat16 instructions)."""
    acc = _SCRATCH.get("acc", (chunk,), out, dtype=torch.float32)
    coeffs = lam.tolist()
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        a = acc[: e - s]
        a.copy_(base[s:e])
        for k, c in enumerate(coeffs):
            a.add_(tau[k, s:e], alpha=c)
        out[s:e].copy_(a)


def _widen(out, base, tau, lam, lo, hi, chunk) -> None:
    """``addmv`` per chunk; task vectors narrower than the weights (bfloat16 τ over float32
    weights) are widened one chunk at a time into a reused buffer."""
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        t = tau[:, s:e]
        if t.dtype != out.dtype:
            t = _SCRATCH.get("widen", tuple(t.shape), out).copy_(t)
        torch.addmv(base[s:e], t.T, lam, out=out[s:e])


def _native(out, base, tau, lam, lo, hi, chunk) -> None:
    """The fused C kernel (:mod:`mergesweep.merge.native`): one pass, float32 accumulation of an
    L1-sized block over every expert; built for this CPU on first use."""
    from mergesweep.merge import native

    native.merge_range(out, base, tau, lam, lo, hi, chunk)


# (kernel, chunk) candidates per dtype layout; the fastest on this CPU is picked on first use
# (the C kernel joins them where it can be built: :func:`_options`).
_CANDIDATES = {
    "same": [(_widen, CHUNK)],
    "low": [(_addmm, CHUNK), (_accumulate, 1 << 18), (_accumulate, 1 << 16)],
    "narrow_tau": [(_widen, CHUNK), (_widen, 1 << 18), (_widen, 1 << 16)],
}
_CHOSEN: dict[tuple, tuple] = {}
_TUNE_ELEMENTS = 1 << 22  # beyond the caches, small enough to time in milliseconds
_TUNE_RUNS = 3


def _layout(out: torch.Tensor, tau: torch.Tensor) -> str:
    if out.dtype in (torch.bfloat16, torch.float16):
        return "low" if tau.dtype == out.dtype else "same"
    return "narrow_tau" if tau.dtype != out.dtype else "same"


def _options(layout: str, out: torch.Tensor, tau: torch.Tensor) -> list[tuple]:
    from mergesweep.merge import native

    native_ok = os.environ.get("MERGESWEEP_NATIVE", "1") != "0" and native.available(out, tau)
    return _CANDIDATES[layout] + ([(_native, 512), (_native, 1024)] if native_ok else [])


def _chosen(out: torch.Tensor, tau: torch.Tensor) -> tuple:
    """The fastest (kernel, chunk) for this layout and expert count on this CPU, timed once
    per process on scratch buffers (CPUs differ: bfloat16 ``addmm`` is 5× faster than an
    accumulator on AMX and 5× slower on AVX2 alone)."""
    key = (_layout(out, tau), out.dtype, tau.dtype, tau.shape[0])
    if key not in _CHOSEN:
        options = _options(key[0], out, tau)
        if len(options) == 1:
            _CHOSEN[key] = options[0]
        else:
            # Filled, not zeros: untouched zero pages all map one physical page, which reads
            # from cache and times compute instead of memory.
            n = _TUNE_ELEMENTS
            o, b = torch.full((n,), 0.5, dtype=out.dtype), torch.full((n,), 0.5, dtype=out.dtype)
            t = torch.full((tau.shape[0], n), 0.25, dtype=tau.dtype)
            lam = torch.full((tau.shape[0],), 0.5, dtype=out.dtype)
            best = None
            for fn, chunk in options:
                fn(o, b, t, lam, 0, n, chunk)  # warm-up: scratch, oneDNN primitives
                for _ in range(_TUNE_RUNS):  # the best of a few: a shared machine is noisy
                    t0 = time.perf_counter()
                    fn(o, b, t, lam, 0, n, chunk)
                    spent = time.perf_counter() - t0
                    if best is None or spent < best[0]:
                        best = (spent, fn, chunk)
            _CHOSEN[key] = best[1:]
    return _CHOSEN[key]


def tune_kernel(out: torch.Tensor, tau: torch.Tensor) -> None:
    """Pick the linear kernel for these weights and task vectors now (a worker calls it while
    loading, so the ~0.1-0.4 s of timing counts as load, not as its first trial's merge)."""
    if not out.is_cuda:
        _chosen(out, tau)


def linear_range(
    out: torch.Tensor,
    base: torch.Tensor,
    tau: torch.Tensor,
    coeffs: Sequence[float] | np.ndarray,
    lo: int,
    hi: int,
    chunk: int | None = None,
    kernel: Callable[..., None] | None = None,
) -> None:
    """``out[lo:hi] = base[lo:hi] + Σₖ coeffs[k]·tau[k, lo:hi]`` without model-sized temporaries.

    ``kernel`` and ``chunk`` default to the fastest for the dtypes and expert count on this
    CPU (:func:`_chosen`); tests pass each kernel explicitly.
    """
    lam = torch.as_tensor(np.asarray(coeffs, dtype=np.float64), dtype=out.dtype, device=out.device)
    if out.is_cuda:  # one launch per range: the GPU needs big kernels, not cache blocking
        (kernel or _widen)(out, base, tau, lam, lo, hi, max(hi - lo, 1))
        return
    if kernel is None:
        kernel, tuned = _chosen(out, tau)
        chunk = chunk or tuned
    kernel(out, base, tau, lam, lo, hi, chunk or CHUNK)


KERNELS = {"addmm": _addmm, "accumulate": _accumulate, "widen": _widen, "native": _native}


def triad(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scalar: float = 3.0) -> None:
    """STREAM triad ``a = b + scalar·c`` (the bandwidth reference: 3 arrays of traffic)."""
    torch.add(b, c, alpha=scalar, out=a)
