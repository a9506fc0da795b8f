"""Per-trial overhead outside merge and evaluation on the quick start (issue: Studies).

Runs experiments/quickstart.yaml (digits zoo, layer-wise, TPE) with the inline executor into a
fresh SQLite file and splits each trial's wall time into merge, evaluation and the driver's
overhead (ask, plan, storage writes, tell). Target: overhead ≤ 5% of trial time.

    python benchmarks/trial_overhead.py [--trials 30]

Writes benchmarks/results/trial_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

import mergesweep
from mergesweep.storage import open_storage

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        start = time.perf_counter()
        summary = mergesweep.run(
            HERE.parent / "experiments" / "quickstart.yaml",
            [f"storage={url}", f"budget.trials={args.trials}"],
        )
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name="quickstart", storage=open_storage(url))
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        merge = [t.user_attrs["timings"]["merge_s"] for t in trials]
        evals = [t.user_attrs["timings"]["eval_s"] for t in trials]
        load_s = trials[0].user_attrs["timings"]["load_s"]
    per_trial_overhead = summary.overhead_s / summary.complete
    per_trial = statistics.mean(merge) + statistics.mean(evals) + per_trial_overhead
    result = {
        "benchmark": "trial_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": 1,
        },
        "command": f"python benchmarks/trial_overhead.py --trials {args.trials}",
        "config": "experiments/quickstart.yaml (inline executor, SQLite)",
        "trials": summary.complete,
        "merge_s_mean": statistics.mean(merge),
        "eval_s_mean": statistics.mean(evals),
        "overhead_s_mean": per_trial_overhead,
        "overhead_fraction": per_trial_overhead / per_trial,
        "target_overhead_fraction": 0.05,
        "load_s": load_s,
        "wall_s_total": wall,
        "best_value": summary.best[0]["values"][0],
    }
    out = HERE / "results" / "trial_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
