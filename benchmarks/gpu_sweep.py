"""The quick start on a GPU: trials/hour, merge_s and eval_s against the CPU of the same machine
(issue: Benchmarks that prove it, item 5).

Runs experiments/quickstart.yaml (digits zoo, layer-wise, TPE, SQLite in a temporary folder)
with the same trial budget, one after the other on one local Ray instance started first (so
Ray's start-up is not counted):

- ``cpu_ray_1`` / ``cpu_ray_2``: 1 and 2 Ray workers of one torch thread, pool on the CPU
  (the baseline, on this machine);
- ``gpu_inline``: the driver's own process merges and evaluates on the GPU;
- ``gpu_ray_1``: one Ray worker holding the GPU (``executor.num_gpus=1``);
- ``gpu_ray_2``: two Ray workers sharing it (``executor.num_gpus=0.5`` each);
- ``gpu_ray_1_batch1024``: ``gpu_ray_1`` with one evaluation batch per task instead of 64
  examples per batch.

Each run reports steady-state trials/hour (first trial's start to last trial's completion),
per-trial ``merge_ms`` and ``eval_ms`` (means and medians; a GPU merge is timed to its kernels'
end), ``load_s`` and the best value, and the enqueued first point's per-task accuracy, which
must agree across devices within one example of 100 per task.

    python benchmarks/gpu_sweep.py [--trials 60] [--runs cpu_ray_1 gpu_ray_1 ...] [--out PATH]

Needs a CUDA device (``--device cpu`` dry-runs the GPU rows on the CPU, to check the script).
Writes benchmarks/results/gpu_sweep.json unless ``--out`` says otherwise. On a lent machine,
``benchmarks/device_run.sh`` runs it together with the GPU tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from runtime_throughput import run as throughput_run
from runtime_throughput import start_local_ray
from study_scores import cpu_name

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "experiments" / "quickstart.yaml"

# name → overrides of the quick start (the device of the GPU rows is filled in by --device)
RUNS: dict[str, list[str]] = {
    "cpu_ray_1": ["executor.kind=ray", "executor.workers=1"],
    "cpu_ray_2": ["executor.kind=ray", "executor.workers=2"],
    "gpu_inline": ["executor.kind=inline", "pool.device={device}"],
    "gpu_ray_1": [
        "executor.kind=ray",
        "executor.workers=1",
        "executor.num_gpus={gpus}",
        "pool.device={device}",
    ],
    "gpu_ray_2": [
        "executor.kind=ray",
        "executor.workers=2",
        "executor.num_gpus={half}",
        "pool.device={device}",
    ],
    # one forward pass per task (batch_size 1024 ≥ a split): a GPU wants few large kernels
    "gpu_ray_1_batch1024": [
        "executor.kind=ray",
        "executor.workers=1",
        "executor.num_gpus={gpus}",
        "pool.device={device}",
        *(f"objectives.tasks.{t}.batch_size=1024" for t in ("low", "high", "parity", "loop")),
    ],
}


def run(name: str, url: str, trials: int, overrides: list[str]) -> dict[str, Any]:
    """One sweep of ``trials`` on a fresh study, one torch thread per worker: runtime_throughput's
    steady-state figures, plus trials/hour."""
    result = throughput_run(name, url, trials, ["executor.threads=1", *overrides])
    result["trials_per_hour"] = 3600 * result["throughput_per_s"]
    return result


def agreement(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Largest per-task difference of the enqueued point's accuracy from the first run's."""
    rows = {k: v["init_metrics"] for k, v in runs.items() if v.get("init_metrics")}
    if len(rows) < 2:
        return {}
    ref_name, ref = next(iter(rows.items()))
    diffs = {
        name: max(abs(m[t] - ref[t]) for t in ref) for name, m in rows.items() if name != ref_name
    }
    return {
        "reference": ref_name,
        "max_abs_diff": diffs,
        "within_one_example": max(diffs.values()) <= 0.01 + 1e-9,
    }


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu_name(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--device", default="cuda", help="the GPU rows' pool.device")
    parser.add_argument("--out", default=str(HERE / "results" / "gpu_sweep.json"))
    args = parser.parse_args()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.device.startswith("cuda") and gpus == 0:
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the CPU dry run gives the "GPU" rows no GPU share (there is none to share)
    fill = {"device": args.device, "gpus": 1 if gpus else 0, "half": 0.5 if gpus else 0}
    start_local_ray(gpus)
    runs: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            for name in args.runs:
                overrides = [o.format(**fill) for o in RUNS[name]]
                runs[name] = run(name, url, args.trials, overrides)
                r = runs[name]
                print(
                    f"{name:11s} {r['trials_per_hour']:8.0f} trials/h  merge "
                    f"{r['merge_ms_median']:7.2f} ms  eval {r['eval_ms_median']:7.1f} ms  "
                    f"best {r['best_value']:.4f}",
                    flush=True,
                )
    finally:
        ray.shutdown()
    ratios = {}
    for gpu, cpu in (
        ("gpu_ray_1", "cpu_ray_1"),
        ("gpu_ray_2", "cpu_ray_2"),
        ("gpu_ray_2", "gpu_ray_1"),
        ("gpu_ray_1_batch1024", "gpu_ray_1"),
    ):
        if gpu in runs and cpu in runs:
            ratios[f"{gpu}_vs_{cpu}"] = runs[gpu]["trials_per_hour"] / runs[cpu]["trials_per_hour"]
    result = {
        "benchmark": "gpu_sweep",
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "machine": machine(args.device),
        "command": f"python benchmarks/gpu_sweep.py --trials {args.trials} --device {args.device}",
        "config": "experiments/quickstart.yaml (SQLite, one torch thread per worker)",
        "runs": runs,
        "throughput_ratios": ratios,
        "accuracy_agreement": agreement(runs),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("machine", "throughput_ratios", "accuracy_agreement")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
