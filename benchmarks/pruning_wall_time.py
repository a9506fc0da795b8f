"""Wall time to reach the same best score with and without multi-fidelity pruning (text zoo).

For every seed, two studies of ``experiments/pruning_text.yaml`` (layer-wise TPE, 24 λ,
mean validation accuracy on 200 fixed examples per task), inline, ``--threads`` torch threads:

* ``plain``: pruning off, ``--trials`` trials; its best value is the seed's **target**;
* ``pruned``: the file's ``pruning`` block (or ``--pruner``/``--rungs``), up to
  ``--pruned-trials`` trials (pruned ones count); only its trials until a complete one first
  reaches the target count.

Reported per seed: seconds from the sweep's start (pool load included, the same in both) until
the best complete value first reaches the target, in each study; their ratio (the speed-up);
trials, pruned trials and evaluation seconds spent until then; the held-out test accuracy
(whole test splits) of each study's pick at that moment; and, at equal time, the pruned
study's best when the plain one had finished all its trials. The target is met when the median
speed-up over seeds is ≥ 2 with the picks' test accuracy within 1 point.

    python benchmarks/pruning_wall_time.py [--seeds 0 1 2] [--trials 60] [--pruned-trials 180]
        [--pruner halving] [--rungs 0.1 0.3] [--set reduction=4 ...] [--tag NAME]
        [--threads 1] [--db PATH] [--no-lock]

Runs under the benchmark lock (``/tmp/mergesweep-bench.lock``, per study). Writes
benchmarks/results/pruning_wall_time.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from study_scores import LOCK, Scorer, bench_lock, machine

from mergesweep.api import load_config_dict
from mergesweep.driver import run_sweep
from mergesweep.spaces import build_space
from mergesweep.study import open_study, reconcile
from mergesweep.zoo import zoo_dir

HERE = Path(__file__).resolve().parent
EXPERIMENT = HERE.parent / "experiments" / "pruning_text.yaml"
START_ATTR = "bench_start"  # study user attr: wall-clock time the sweep started
optuna.logging.set_verbosity(optuna.logging.WARNING)


def config(kind: str, seed: int, trials: int, storage: str, args: argparse.Namespace) -> dict:
    overrides = [
        f"name=pr_{kind}{'_' + args.tag if kind == 'pruned' and args.tag else ''}_s{seed}",
        f"storage={storage}",
        f"seed={seed}",
        f"budget.trials={trials}",
        "executor.kind=inline",
        f"executor.threads={args.threads}",
    ]
    if kind == "plain":
        overrides.append("pruning.pruner=none")
    else:
        if args.pruner:
            overrides.append(f"pruning.pruner={args.pruner}")
        if args.rungs:
            overrides.append(f"pruning.rungs=[{', '.join(map(str, args.rungs))}]")
        overrides += [f"pruning.{kv}" for kv in args.set]
    return load_config_dict(EXPERIMENT, overrides)


def run(cfg: dict[str, Any]) -> optuna.Study:
    """Run (or continue) one study to its budget; the start time is kept across resumes."""
    setup = open_study(cfg)
    reconcile(setup.study)
    if START_ATTR not in setup.study.user_attrs:
        setup.study.set_user_attr(START_ATTR, time.time())
    run_sweep(setup, progress=False)
    return setup.study


def best_by(study: optuna.Study, seconds: float) -> float | None:
    """The best complete value within ``seconds`` of the sweep's start."""
    start = float(study.user_attrs[START_ATTR])
    values = [
        t.value
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.datetime_complete.timestamp() - start <= seconds
    ]
    return round(max(values), 4) if values else None


def trace(study: optuna.Study, target: float) -> dict[str, Any]:
    """What the study spent until its best complete value first reached ``target``."""
    start = float(study.user_attrs[START_ATTR])
    finished = sorted(
        (t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: t.datetime_complete,
    )
    hit = next((t for t in finished if t.state == TrialState.COMPLETE and t.value >= target), None)
    upto = finished if hit is None else finished[: finished.index(hit) + 1]
    eval_s = sum(t.user_attrs.get("timings", {}).get("eval_s", 0.0) for t in upto)
    end = (hit or upto[-1]).datetime_complete.timestamp()
    return {
        "reached": hit is not None,
        "seconds": round(end - start, 1),
        "trial": hit.number if hit else None,
        "trials": len(upto),
        "pruned": sum(t.state == TrialState.PRUNED for t in upto),
        "eval_s": round(eval_s, 1),
        "best": round(max(t.value for t in upto if t.state == TrialState.COMPLETE), 4),
        "pick": (
            hit or max((t for t in upto if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        ).params,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=60, help="budget of the study without pruning")
    ap.add_argument("--pruned-trials", type=int, default=180, help="cap of the pruned study")
    ap.add_argument("--pruner", default="", help="override the file's pruning.pruner")
    ap.add_argument("--rungs", type=float, nargs="*", default=[], help="override pruning.rungs")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="pruning.KEY overrides"
    )
    ap.add_argument(
        "--tag", default="", help="suffix of the pruned studies' names (one per setting)"
    )
    ap.add_argument("--no-lock", action="store_true", help="run beside another benchmark")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the evaluation")
    ap.add_argument("--db", default="", help="SQLite file for the studies (reused if it exists)")
    ap.add_argument("--out", default=str(HERE / "results" / "pruning_wall_time.json"))
    args = ap.parse_args()
    if not zoo_dir("text").exists():
        raise SystemExit("pruning_wall_time: build the zoo first: mergesweep zoo build text")
    torch.set_num_threads(args.threads)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "pruning.db"
    storage = f"sqlite:///{db.resolve()}"
    seeds: dict[str, Any] = {}
    scorer: Scorer | None = None
    for seed in args.seeds:
        print(f"== seed {seed}", flush=True)
        plain_cfg = config("plain", seed, args.trials, storage, args)
        with bench_lock(None if args.no_lock else LOCK):
            plain = run(plain_cfg)
        target = float(plain.best_value)
        pruned_cfg = config("pruned", seed, args.pruned_trials, storage, args)
        with bench_lock(None if args.no_lock else LOCK):
            pruned = run(pruned_cfg)
        res: dict[str, Any] = {"target": round(target, 4), "load_avg_1m": os.getloadavg()[0]}
        if scorer is None or scorer.ev.cfg.seed != seed:
            scorer = Scorer(plain_cfg)  # test splits whole; validation subsets of this seed
        space = build_space(
            plain_cfg["space"]["kind"], scorer.ev.pool.layout, plain_cfg["space"]["options"]
        )
        for kind, study in (("plain", plain), ("pruned", pruned)):
            rec = trace(study, target)
            test = scorer.test_scores(space.to_plan(rec.pop("pick")))
            rec["test_avg"] = round(test["test_avg"], 4)
            res[kind] = rec
        res["speedup"] = (
            round(res["plain"]["seconds"] / res["pruned"]["seconds"], 2)
            if res["pruned"]["reached"]
            else None
        )
        res["test_delta"] = round(res["pruned"]["test_avg"] - res["plain"]["test_avg"], 4)
        # Equal time: the pruned study's best when the plain one had run all its trials.
        plain_s = max(
            t.datetime_complete.timestamp() for t in plain.trials if t.datetime_complete
        ) - float(plain.user_attrs[START_ATTR])
        res["plain_total_s"] = round(plain_s, 1)
        res["pruned_best_at_plain_total_s"] = best_by(pruned, plain_s)
        seeds[str(seed)] = res
        print(json.dumps(res), flush=True)
        gc.collect()
    speedups = [r["speedup"] for r in seeds.values()]
    reached = [s for s in speedups if s is not None]
    median = (
        float(np.median(reached + [0.0] * (len(speedups) - len(reached))))
        if 2 * len(reached) > len(speedups)
        else None
    )
    cfg = config("pruned", args.seeds[0], args.pruned_trials, storage, args)
    out = {
        "benchmark": "pruning_wall_time",
        "command": "python benchmarks/pruning_wall_time.py "
        + " ".join(
            [f"--seeds {' '.join(map(str, args.seeds))}", f"--trials {args.trials}"]
            + [f"--threads {args.threads}"]
            + [f"--pruned-trials {args.pruned_trials}"]
            + ([f"--pruner {args.pruner}"] if args.pruner else [])
            + ([f"--rungs {' '.join(map(str, args.rungs))}"] if args.rungs else [])
            + ([f"--set {' '.join(args.set)}"] if args.set else [])
        ),
        "experiment": "experiments/pruning_text.yaml",
        "pruning": cfg["pruning"],
        "machine": machine(),
        "seeds": seeds,
        "summary": {
            "speedup_median": median,
            "speedups": speedups,
            "test_delta_max_abs": round(max(abs(r["test_delta"]) for r in seeds.values()), 4),
            "target": "median speed-up ≥ 2 at test accuracy within 0.01",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out["summary"]))


if __name__ == "__main__":
    main()
