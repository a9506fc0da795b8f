"""Merge bandwidth: per-trial ``apply`` time against a STREAM triad (issue: Core).

Builds a real :class:`~mergesweep.pool.ModelPool` from generated ``.safetensors`` files (48
tensors of 2048×1024, ~100.7M float32 parameters, 8 experts), measures a STREAM-style triad
(``kernels.triad``) over arrays of the same length in the same process and thread settings, then
times ``apply`` per trial for task arithmetic model-wise and layer-wise (12 blocks of 4 tensors,
one coefficient per block and expert), and for information magnitude top-k (per-trial
densities), TIES and DARE. Bytes per trial are the linear merge's minimum traffic, (N + 2)·P
elements (read θ₀ and each τₖ once, write θ once); the triad moves 3·P. Targets:
model-wise and layer-wise ≥ 0.6 of the triad's bytes/s.

    python benchmarks/merge_bandwidth.py [--threads N] [--repeats 5] [--device cpu]

Needs ~5 GB of memory and ~3.7 GB of temporary disk. Writes
benchmarks/results/merge_bandwidth.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from study_scores import cpu_name

from mergesweep.merge import PrepareContext, build_method, kernels
from mergesweep.merge.kernels import triad
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool, PoolSpec

HERE = Path(__file__).resolve().parent
BLOCKS, PER_BLOCK, SHAPE = 12, 4, (2048, 1024)


def build_pool(
    root: Path,
    experts: int,
    device: str,
    shape: tuple[int, int] = SHAPE,
    dtype: torch.dtype = torch.float32,
    tau_dtype: str = "float32",
) -> ModelPool:
    """Base and experts as safetensors files (θₖ = θ₀ + 0.01·noise) in ``dtype``, loaded as a
    pool with task vectors in ``tau_dtype``."""
    g = torch.Generator().manual_seed(0)
    names = [f"layers.{b}.w{j}" for b in range(BLOCKS) for j in range(PER_BLOCK)]
    base = {n: torch.randn(shape, generator=g) for n in names}
    save_file({n: t.to(dtype) for n, t in base.items()}, str(root / "base.safetensors"))
    paths = {}
    for k in range(experts):
        expert = {
            n: (t + 0.01 * torch.randn(shape, generator=g)).to(dtype) for n, t in base.items()
        }
        paths[f"task{k}"] = str(root / f"expert{k}.safetensors")
        save_file(expert, paths[f"task{k}"])
        del expert
    del base
    spec = PoolSpec(str(root / "base.safetensors"), paths, device=device, dtype=tau_dtype)
    return ModelPool(spec)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Peak resident memory while a block runs, sampled every 2 ms (catches model-sized temps)."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


class Triad:
    """STREAM triad over three arrays of ``n`` elements, kept for the whole run."""

    def __init__(self, n: int, dtype: torch.dtype, device: str) -> None:
        self.a, self.b, self.c = (
            torch.full((n,), float(v), dtype=dtype, device=device) for v in (0, 1, 2)
        )
        self.nbytes = 3 * n * self.a.element_size()

    def __call__(self) -> None:
        triad(self.a, self.b, self.c)


def _once(fn: Callable[[], None], device: str) -> float:
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def paired(fn: Callable[[], None], ref: Triad, repeats: int, device: str) -> tuple[list, list]:
    """Times of ``fn`` and of a triad run right before each, after one warm-up of both.

    Pairing keeps the ratio honest on a shared machine: both halves of a pair see about the
    same load from other processes.
    """
    fn()
    ref()
    _sync(device)
    runs, triads = [], []
    for _ in range(repeats):
        triads.append(_once(ref, device))
        runs.append(_once(fn, device))
    return runs, triads


def summary(runs: list[float], triads: list[float], nbytes: int, triad_nbytes: int) -> dict:
    best = min(runs)
    ratios = [(nbytes / r) / (triad_nbytes / t) for r, t in zip(runs, triads)]
    return {
        "bytes_per_trial": nbytes,
        "best_s": round(best, 4),
        "median_s": round(statistics.median(runs), 4),
        "bytes_per_s": round(nbytes / best),
        "gb_per_s": round(nbytes / best / 1e9, 2),
        "triad_gb_per_s": round(triad_nbytes / min(triads) / 1e9, 2),
        "ratio_to_triad": round((nbytes / best) / (triad_nbytes / min(triads)), 3),
        "paired_ratio_median": round(statistics.median(ratios), 3),
    }


CASES = {
    # label: (method, options, plan kind); DARE last: its prepare rewrites the task vectors.
    "linear_modelwise": ("linear", {}, "modelwise"),
    "linear_layerwise": ("linear", {}, "layerwise"),
    "magnitude_densities": ("magnitude", {}, "densities"),
    "ties": ("ties", {"density": 0.2}, "layerwise"),
    "dare_ties": ("dare_ties", {"p": 0.5, "density": 0.2}, "layerwise"),
    "dare_linear": ("dare_linear", {"p": 0.5}, "layerwise"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--params", type=float, default=100.7, help="pool size in millions of parameters"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float32+bfloat16"],
        default="float32",
        help="weights (and task vectors); float32+bfloat16: float32 weights, bfloat16 τ",
    )
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", default=str(HERE / "results" / "merge_bandwidth.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, N, R = args.device, args.experts, args.repeats

    rows = max(1, round(args.params * 1e6 / (BLOCKS * PER_BLOCK * SHAPE[1])))
    weights, _, tau_dtype = args.dtype.partition("+")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pool = build_pool(
            Path(tmp), N, dev, (rows, SHAPE[1]), getattr(torch, weights), tau_dtype or weights
        )
        load_s = time.perf_counter() - t0
    P, T = pool.layout.num_params, pool.layout.num_tensors
    print(f"pool: {P / 1e6:.1f}M params, {T} tensors, {N} experts, built+loaded in {load_s:.0f}s")
    ref = Triad(min(P, 64 * 2**20), pool.live.dtype, dev)  # ≥ 64M elements: far beyond cache

    rng = np.random.default_rng(0)
    per_block = np.repeat(rng.uniform(0.1, 0.5, (BLOCKS, N)), PER_BLOCK, axis=0)
    plans = {
        "modelwise": MergePlan.uniform(T, rng.uniform(0.1, 0.5, N)),
        "layerwise": MergePlan(per_block),
        "densities": MergePlan(per_block, rng.uniform(0.1, 0.9, (T, N))),
    }
    nbytes = P * (2 * pool.live.element_size() + N * pool.tau.element_size())
    results = {}
    for label in args.cases:
        name, options, kind = CASES[label]
        method = build_method(name, options)
        t0 = time.perf_counter()
        method.prepare(pool, PrepareContext(seed=0))
        prepare_s = time.perf_counter() - t0
        with PeakRss() as rss:
            runs, triads = paired(lambda m=method, p=plans[kind]: m.apply(pool, p), ref, R, dev)
        res = summary(runs, triads, nbytes, ref.nbytes)
        res.update(plan=kind, prepare_s=round(prepare_s, 2), trial_rss_growth_mb=rss.growth_mb)
        results[label] = res
        print(
            f"{label:>20}: {res['best_s']:.3f}s/trial, {res['gb_per_s']} GB/s, triad "
            f"{res['triad_gb_per_s']} GB/s, ratio {res['ratio_to_triad']} (paired median "
            f"{res['paired_ratio_median']}), prepare {prepare_s:.1f}s, RSS +{rss.growth_mb} MB"
        )

    report = {
        "benchmark": "merge_bandwidth",
        "command": " ".join(["python", "benchmarks/merge_bandwidth.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": dev,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            # other processes compete for the cores and memory bus: report how busy it was
            "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        },
        "settings": {
            "params": P,
            "tensors": T,
            "experts": N,
            "layerwise_blocks": BLOCKS,
            "dtype": str(pool.live.dtype).removeprefix("torch."),
            "tau_dtype": str(pool.tau.dtype).removeprefix("torch."),
            "repeats": R,
            "timing": (
                "after one warm-up, each trial right after a triad run; best trial vs best triad "
                "(ratio_to_triad) and median of the per-pair ratios; bytes = P·(2·w + N·t) "
                "for w-byte weights and t-byte task vectors; triad over min(P, 64M) elements"
            ),
            "target_ratio": 0.6,
        },
        "pool_build_and_load_s": round(load_s, 1),
        # The linear kernel the per-CPU tuning picked, per layout (dtypes) and expert count.
        "kernels": {
            f"{layout} {str(w).removeprefix('torch.')}/{str(t).removeprefix('torch.')} x{n}": (
                f"{fn.__name__.lstrip('_')} chunk {chunk}"
            )
            for (layout, w, t, n), (fn, chunk) in kernels._CHOSEN.items()
        },
        "methods": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
