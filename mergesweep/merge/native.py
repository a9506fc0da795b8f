"""The fused C merge kernel (``native.c``): compiled for this CPU on first use, called via ctypes.

torch runs ``base + Σ λₖ·τₖ`` as one pass per expert or, in bfloat16 on CPUs without bfloat16
instructions, through float32 conversions of every operand: 0.3-0.4 of the STREAM triad on an
AVX2 CPU. The C kernel accumulates an L1-sized block in float32 over every expert and writes it
once, for float32 and bfloat16 weights and task vectors. It is one candidate among the torch
kernels (:func:`mergesweep.merge.kernels._chosen` times them once per process and keeps the
fastest), so a machine where it is slower, or where it cannot be built, loses nothing.

The shared library is built with ``$CC`` (default ``cc``) ``-O3 -march=native`` into
``$MERGESWEEP_CACHE/native/`` (default ``~/.cache/mergesweep``), named by a hash of the source,
the compiler's version and the CPU's flags, in about a second; ``MERGESWEEP_NATIVE=0`` turns
it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["available", "library", "merge_range"]

SOURCE = Path(__file__).with_name("native.c")
BLOCK = 1024  # elements accumulated per pass over the experts (native.c caps it at 4096)
_FUNCTIONS = {
    (torch.bfloat16, torch.bfloat16): "merge_bf16_bf16",
    (torch.float32, torch.bfloat16): "merge_f32_bf16",
    (torch.float32, torch.float32): "merge_f32_f32",
}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    from mergesweep.zoo import cache_root

    return cache_root() / "native"


@functools.cache
def library() -> Any | None:
    """The loaded kernel library, building it if needed; None where it cannot be built or
    loaded (no C compiler, not Linux/macOS on x86-64 or arm64). ``MERGESWEEP_NATIVE=0`` is
    read where the kernels are tuned (:func:`mergesweep.merge.kernels._options`)."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return None
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        key = hashlib.sha256(
            SOURCE.read_bytes() + version.encode() + _cpu_flags().encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"merge-{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                flags = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c99"]
                subprocess.run(
                    [cc, *flags, str(SOURCE), "-o", str(built)],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                os.replace(built, target)  # atomic: concurrent workers never load half a file
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    args = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_int64] * 3
    for name in _FUNCTIONS.values():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, None
    return lib


def available(out: torch.Tensor, tau: torch.Tensor) -> bool:
    """Whether the C kernel takes these weights and task vectors (CPU, a supported dtype pair,
    rows of ``tau`` contiguous) and could be built here."""
    return (
        out.device.type == "cpu"
        and (out.dtype, tau.dtype) in _FUNCTIONS
        and tau.dim() == 2
        and tau.stride(1) == 1
        and library() is not None
    )


def merge_range(
    out: torch.Tensor,
    base: torch.Tensor,
    tau: torch.Tensor,
    lam: torch.Tensor,
    lo: int,
    hi: int,
    chunk: int = BLOCK,
) -> None:
    """``out[lo:hi] = base[lo:hi] + lam @ tau[:, lo:hi]`` in one pass (float32 accumulation),
    accumulating ``chunk`` elements at a time (at most 4096); the kernel signature of
    :mod:`mergesweep.merge.kernels`."""
    if hi <= lo:
        return
    lib = library()
    assert lib is not None and out.is_contiguous() and base.is_contiguous()
    fn = getattr(lib, _FUNCTIONS[(out.dtype, tau.dtype)])
    coeffs = lam.detach().to(torch.float32).contiguous()  # λ as the caller rounded it
    size = out.element_size()
    fn(
        out.data_ptr() + lo * size,
        base.data_ptr() + lo * size,
        tau.data_ptr() + lo * tau.element_size(),
        tau.stride(0),
        coeffs.data_ptr(),
        tau.shape[0],
        hi - lo,
        chunk or BLOCK,
    )
