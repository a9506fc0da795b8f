"""Per-trial overhead outside merge and evaluation on the quick start (issue: Studies).

Runs experiments/quickstart.yaml (digits zoo, layer-wise, 20 coefficients, TPE, SQLite in a
temporary folder) with the same budget three ways: ``inline`` (the driver asks, merges,
evaluates and tells in turn), and one Ray worker with ``executor.prefetch`` 0 and 1 (with 1 the
worker holds the next job while it runs the current one, so the driver's ask and tell overlap
the evaluation). For each run, in steady state (first trial's start to last trial's end):

- ``overhead_fraction`` = 1 − (merge + evaluation time) / (wall time × workers): the share of
  the trial time spent outside merge and evaluation, what the target (≤ 5%) is about;
- ``driver_overhead_ms``: the driver's own time per trial (ask, plan, user attrs, tell), whether
  or not it overlaps the evaluation;
- merge and evaluation times per trial.

    python benchmarks/trial_overhead.py [--trials 40]

Writes benchmarks/results/trial_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import optuna
import ray
import torch
from runtime_throughput import run, start_local_ray

HERE = Path(__file__).resolve().parent
RUNS = {
    "inline": ["executor.kind=inline"],
    "ray_1_prefetch_0": ["executor.kind=ray", "executor.workers=1", "executor.prefetch=0"],
    "ray_1_prefetch_1": ["executor.kind=ray", "executor.workers=1", "executor.prefetch=1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_start = os.getloadavg()[0]
    start_local_ray()
    runs = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            for name, spec in RUNS.items():
                r = run(name, url, args.trials, [*spec, "executor.threads=1"])
                r["overhead_fraction"] = 1.0 - r.pop("busy_fraction")
                runs[name] = r
    finally:
        ray.shutdown()
    result = {
        "benchmark": "trial_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": 1,
            "load_average_1min": [load_start, os.getloadavg()[0]],
        },
        "command": f"python benchmarks/trial_overhead.py --trials {args.trials}",
        "config": "experiments/quickstart.yaml (20 coefficients, TPE, SQLite)",
        "runs": runs,
        "target_overhead_fraction": 0.05,
    }
    out = HERE / "results" / "trial_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
