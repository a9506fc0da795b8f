"""Per-trial overhead of ``executor: tune`` vs ``ray`` vs ``inline`` on the quick start.

Runs experiments/quickstart.yaml (digits zoo, layer-wise, TPE, SQLite in a temporary folder,
one worker of one torch thread) with each executor on one local Ray instance started before
the runs (Ray's own start-up is not counted):

- ``inline``: the driver loop in this process;
- ``ray``: the driver loop on one resident Ray actor (the default for real work);
- ``tune``: the whole sweep through ``ray.tune.Tuner`` + ``OptunaSearch`` (what
  ``executor.kind=tune`` runs), Tune reusing the trial actor (``reuse_actors=True``);
- ``tune_fresh_actors`` (``--fresh-trials``, fewer trials): Tune's default, a new actor per
  trial, which loads the pool again every time.

Per run: ``per_trial_s`` is the steady-state wall time per trial (first trial's completion to
the last's, over the trials in between: start-up and the first pool load excluded);
``overhead_per_trial_ms`` is that minus the trials' mean merge + evaluation time (ask, storage
writes, dispatch, for Tune its scheduling, result logging and checkpoints); ``startup_s`` is
the sweep's start to the first trial's completion (actor start, pool load, first trial).

    python benchmarks/tune_overhead.py [--trials 20] [--fresh-trials 6]

Writes benchmarks/results/tune_overhead.json.
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
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from runtime_throughput import start_local_ray

from mergesweep.api import load_config_dict
from mergesweep.driver import run_sweep
from mergesweep.runtime.tune import run_tune_sweep
from mergesweep.study import open_study

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "experiments" / "quickstart.yaml"


def run(name: str, url: str, trials: int, kind: str, tmp: str, **tune_kw: Any) -> dict[str, Any]:
    """One sweep of ``trials`` on a fresh study; steady-state figures from its trials."""
    config = load_config_dict(
        CONFIG,
        [
            f"name={name}",
            f"storage={url}",
            f"budget.trials={trials}",
            f"executor.kind={kind}",
            "executor.workers=1",
            "executor.threads=1",
        ],
    )
    setup = open_study(config)
    start = time.time()
    if kind == "tune":
        run_config = tune.RunConfig(storage_path=f"{tmp}/ray_results", name=name, verbose=0)
        summary = run_tune_sweep(setup, progress=False, run_config=run_config, **tune_kw)
    else:
        summary = run_sweep(setup, progress=False)
    done = sorted(
        setup.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: t.datetime_complete,
    )
    ends = [t.datetime_complete.timestamp() for t in done]
    steady = done[1:]
    per_trial = (ends[-1] - ends[0]) / len(steady)
    work = statistics.mean(
        t.user_attrs["timings"]["merge_s"] + t.user_attrs["timings"]["eval_s"] for t in steady
    )
    cold = [t.user_attrs.get("tune", {}).get("cold_start") for t in done]
    return {
        "executor": kind,
        **({"reuse_actors": tune_kw.get("reuse_actors", True)} if kind == "tune" else {}),
        "trials": summary.complete,
        "failed": summary.failed,
        "per_trial_s": per_trial,
        "merge_eval_s": work,
        "overhead_per_trial_ms": 1e3 * (per_trial - work),
        "overhead_fraction": (per_trial - work) / per_trial,
        "stored_overhead_ms": 1e3
        * statistics.mean(t.user_attrs["timings"]["overhead_s"] for t in steady),
        "startup_s": ends[0] - start,
        "load_s": statistics.mean(t.user_attrs["timings"]["load_s"] for t in done),
        "pool_loads": sum(bool(c) for c in cold) if kind == "tune" else 1,
        "wall_s": summary.wall_s,
        "best_value": summary.best[0]["values"][0] if summary.best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--fresh-trials", type=int, default=6)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune console tables
    load_start = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    start_local_ray()
    runs: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            runs["inline"] = run("inline", url, args.trials, "inline", tmp)
            runs["ray"] = run("ray", url, args.trials, "ray", tmp)
            runs["tune"] = run("tune", url, args.trials, "tune", tmp, reuse_actors=True)
            if args.fresh_trials:
                runs["tune_fresh_actors"] = run(
                    "fresh", url, args.fresh_trials, "tune", tmp, reuse_actors=False
                )
    finally:
        ray.shutdown()
    result = {
        "benchmark": "tune_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": cores,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "optuna": optuna.__version__,
            "load_average_1min": [load_start, os.getloadavg()[0]],  # at start, at end
        },
        "command": (
            "flock /tmp/mergesweep-bench.lock nice -n 0 python benchmarks/tune_overhead.py "
            f"--trials {args.trials} --fresh-trials {args.fresh_trials}"
        ),
        "config": "experiments/quickstart.yaml (TPE, SQLite, 1 worker, 1 torch thread)",
        "runs": runs,
        "tune_vs_ray_overhead_ms": runs["tune"]["overhead_per_trial_ms"]
        - runs["ray"]["overhead_per_trial_ms"],
    }
    out = HERE / "results" / "tune_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
