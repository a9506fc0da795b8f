"""Sample efficiency of the coefficient searches on the text zoo (3 experts, mean validation
accuracy on 200 fixed examples per task, as ``experiments/text_*.yaml``).

Studies, each for every seed (the study seed also draws the validation subsets, so a seed is
a replicate of the whole setup):

* ``random``, ``tpe``, ``gp`` (Optuna's GPSampler), ``cmaes``: one λ ∈ [0, 1] per expert, task
  arithmetic (``experiments/text_taskwise_tpe.yaml`` with the searcher swapped);
* ``dfmerge``: DF-Merge's method and BO searcher (``method: dfmerge`` with 30 Fisher examples
  per task, exact expectation over the classes; ``searcher: dfmerge``), as
  ``experiments/dfmerge_digits.yaml`` but on the text zoo's model-wise space;
* ``bo_layerwise``: the ``bo`` searcher over λ per expert and block (24 parameters,
  ``experiments/text_layerwise_bo.yaml``).

Every model-based searcher starts from 10 random points (TPE's and GP's ``n_startup_trials``,
BO's ``n_initial``); CMA-ES starts its mean at λ = 0.3 (the space's init point), as it always
does. Nothing is enqueued unless ``--enqueue-init`` (then λ = 0.3 is every study's first
trial). Per study: the best validation score after 10/20/50/100 trials, the trials until the
best reaches 99% of the same seed's ``--random-trials`` random-search best, the pick's held-out
test accuracy (whole test splits), wall time and suggestion time.

    python benchmarks/sample_efficiency.py [--seeds 0 1 2] [--trials 100] [--random-trials 200]
        [--only random,tpe,...] [--budget dfmerge=60] [--db PATH]

Each study runs under the benchmark lock (``/tmp/mergesweep-bench.lock``, taken per study so
other benchmarks interleave); with ``--db`` a killed run continues where its studies stopped.
Writes benchmarks/results/sample_efficiency.json (merged into the existing file).
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
from study_scores import (
    LOCK,
    Scorer,
    bench_lock,
    best_so_far,
    complete_trials,
    machine,
    trials_to,
)

from mergesweep.api import load_config_dict, sweep
from mergesweep.spaces import build_space
from mergesweep.study import open_study, reconcile
from mergesweep.zoo import zoo_dir

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE.parent / "experiments"
CHECKPOINTS = (10, 20, 50, 100)
TARGET = 0.99  # of the same seed's random-search best
WALL_ATTR = "bench_wall_s"  # study user attr: sweep seconds summed over (resumed) runs
optuna.logging.set_verbosity(optuna.logging.WARNING)

# The experiment files each study starts from, per zoo (digits: for trying the script quickly).
EXPERIMENT_FILES = {
    "text": {"modelwise": "text_taskwise_tpe", "layerwise": "text_layerwise_bo"},
    "digits": {"modelwise": "dfmerge_digits", "layerwise": "bo_layerwise_digits"},
}
TA = ["method.name=task_arithmetic", "method.options={}"]

# key -> (space, overrides, label)
STUDIES: dict[str, tuple[str, list[str], str]] = {
    "random": (
        "modelwise",
        [*TA, "searcher.name=random", "searcher.options={}"],
        "random (model-wise)",
    ),
    "tpe": (
        "modelwise",
        [*TA, "searcher.name=tpe", "searcher.options={n_startup_trials: 10}"],
        "TPE (model-wise)",
    ),
    "gp": (
        "modelwise",
        [*TA, "searcher.name=gp", "searcher.options={n_startup_trials: 10}"],
        "GP, Optuna GPSampler (model-wise)",
    ),
    "cmaes": (
        "modelwise",
        [*TA, "searcher.name=cmaes", "searcher.options={}"],
        "CMA-ES (model-wise)",
    ),
    "dfmerge": (
        "modelwise",
        [
            "method.name=dfmerge",
            "method.options={samples: 30, fisher: true, exact: true}",
            "searcher.name=dfmerge",
            "searcher.options={threads: 1}",
        ],
        "DF-Merge: Fisher merge + BO log-EI ξ 0.01, Matérn (model-wise)",
    ),
    "bo_layerwise": (
        "layerwise",
        [
            *TA,
            "searcher.name=bo",
            "searcher.options={n_initial: 10, acquisition: logei, timeout_s: 60, threads: 1}",
        ],
        "BO layer-wise, BoTorch GP log-EI (λ per expert and block)",
    ),
}


def study_config(
    zoo: str, key: str, seed: int, trials: int, storage: str, enqueue: bool
) -> dict[str, Any]:
    space, overrides, _ = STUDIES[key]
    experiment = EXPERIMENT_FILES[zoo][space]
    common = [
        f"name=se_{key}_s{seed}",
        f"storage={storage}",
        f"seed={seed}",
        f"budget.trials={trials}",
        f"searcher.enqueue={'[init]' if enqueue else '[]'}",
        "executor.kind=inline",  # sequential: every suggestion sees every earlier result
        "executor.threads=1",
    ]
    return load_config_dict(EXPERIMENTS / f"{experiment}.yaml", [*overrides, *common])


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {
        "median": round(float(np.median(a)), 4),
        "max": round(float(a.max()), 4),
        "sum": round(float(a.sum()), 2),
    }


def run_study(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run (or continue) one study to its budget, then score its best trial on test."""
    load_start = os.getloadavg()[0]
    setup = open_study(cfg)
    reconcile(setup.study)  # a killed run's RUNNING trials: FAIL and re-queued once
    t0 = time.perf_counter()
    sweep(setup)
    study = setup.study
    study.set_user_attr(WALL_ATTR, study.user_attrs.get(WALL_ATTR, 0.0) + time.perf_counter() - t0)
    complete = complete_trials(study)
    best = study.best_trial
    scorer = Scorer(cfg)
    space = build_space(cfg["space"]["kind"], scorer.ev.pool.layout, cfg["space"]["options"])
    plan = space.to_plan(best.params)
    curve = best_so_far(study)
    timings = [t.user_attrs.get("timings", {}) for t in complete]
    bo = [t.system_attrs.get("mergesweep_bo", {}) for t in complete]
    out: dict[str, Any] = {
        "trials": len(study.trials),
        "complete": len(complete),
        "best_trial": best.number,
        "best_val": round(float(best.value), 4),
        "best_val_at": {
            str(n): round(float(curve[n - 1]), 4) for n in CHECKPOINTS if n <= len(curve)
        },
        "val_rescored": round(float(np.mean(list(scorer.val(plan).values()))), 4),
        **scorer.test_scores(plan),
        "wall_s": round(study.user_attrs[WALL_ATTR], 1),
        # ask = the searcher's suggestion + the trial's storage writes, per trial
        "ask_s": _stats([t["overhead_s"] for t in timings if "overhead_s" in t]),
        "suggest_s": _stats([i["suggest_s"] for i in bo if "suggest_s" in i]),
        "merge_s": _stats([t["merge_s"] for t in timings if "merge_s" in t]),
        "eval_s": _stats([t["eval_s"] for t in timings if "eval_s" in t]),
        "best_so_far": [round(float(v), 4) for v in curve],
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    if len(best.params) <= 8:
        out["chosen"] = {k: round(v, 4) for k, v in best.params.items()}
    del scorer, setup
    gc.collect()
    return out


def _checkpoint_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for c in map(str, CHECKPOINTS):
        vals = [r["best_val_at"][c] for r in runs if c in r["best_val_at"]]
        if vals:
            out[c] = round(float(np.median(vals)), 4)
    return out


def summarise(studies: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per searcher over seeds: medians of the checkpoints, trials to 99% of the same seed's
    random-search best (never reached: ``null``), test accuracy of the picks."""
    random = studies.get("random", {})
    summary: dict[str, Any] = {}
    for key, by_seed in studies.items():
        to_target: dict[str, int | None] = {}
        for seed, res in by_seed.items():
            ref = random.get(seed)
            if ref is not None:
                target = TARGET * ref["best_val"]
                res["target"] = round(target, 4)
                res["trials_to_target"] = trials_to(np.array(res["best_so_far"]), target)
                to_target[seed] = res["trials_to_target"]
        reached = sorted(v for v in to_target.values() if v is not None)
        n = len(to_target)
        # Exists when more than half of the seeds reached the target (none without a reference).
        padded = reached + [10**9] * (n - len(reached))
        median = float(np.median(padded)) if 2 * len(reached) > n else None
        summary[key] = {
            "label": STUDIES[key][2],
            "seeds": sorted(by_seed, key=int),
            "best_val_at_median": _checkpoint_medians(list(by_seed.values())),
            # Seeds behind each checkpoint's median (runs of different budgets merged).
            "best_val_at_seeds": {
                c: [seed for seed, r in by_seed.items() if c in r["best_val_at"]]
                for c in map(str, CHECKPOINTS)
                if any(c in r["best_val_at"] for r in by_seed.values())
            },
            "best_val_median": round(
                float(np.median([r["best_val"] for r in by_seed.values()])), 4
            ),
            "trials_to_target": to_target,
            "trials_to_target_median": median,
            "test_avg_mean": round(float(np.mean([r["test_avg"] for r in by_seed.values()])), 4),
            "test_avg": [round(r["test_avg"], 4) for r in by_seed.values()],
            "wall_s_median": round(float(np.median([r["wall_s"] for r in by_seed.values()])), 1),
        }
        suggest = [r["suggest_s"]["median"] for r in by_seed.values() if r.get("suggest_s")]
        ask = [r["ask_s"]["median"] for r in by_seed.values() if r.get("ask_s")]
        summary[key]["suggest_s_median"] = round(float(np.median(suggest)), 3) if suggest else None
        summary[key]["ask_s_median"] = round(float(np.median(ask)), 3) if ask else None
    return summary


def merge_results(paths: list[Path], out_path: Path) -> None:
    """Merge the studies of several runs (e.g. two processes on disjoint ``--only``) into one
    result file and summarise them together (the random-search reference may come from any)."""
    merged: dict[str, Any] = {"studies": {}}
    for path in paths:
        part = json.loads(path.read_text())
        for key, by_seed in part["studies"].items():
            merged["studies"].setdefault(key, {}).update(by_seed)
        ran = {k: n for k, n in part["settings"]["budgets"].items() if k in part["studies"]}
        budgets = {**merged.get("settings", {}).get("budgets", {}), **ran}
        merged["settings"] = {**part["settings"], "budgets": budgets}
        merged["machine"] = part["machine"]
        # Parts may come from different machines (wall times are per machine): keep each.
        for m in part.get("machines", [part["machine"]]):
            if m not in merged.setdefault("machines", []):
                merged["machines"].append(m)
    for by_seed in merged["studies"].values():
        for res in by_seed.values():
            res.pop("target", None)
            res.pop("trials_to_target", None)
    merged["summary"] = summarise(merged["studies"])
    merged["merged_from"] = [str(p) for p in paths]
    out_path.write_text(json.dumps(merged, indent=1))
    print(json.dumps(merged["summary"], indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", choices=sorted(EXPERIMENT_FILES), default="text")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=100, help="budget of every non-random study")
    ap.add_argument("--random-trials", type=int, default=200, help="budget of random search")
    ap.add_argument(
        "--budget", nargs="*", default=[], help="per-searcher budgets, e.g. bo_layerwise=60"
    )
    ap.add_argument("--only", default="", help=f"comma-separated of {','.join(STUDIES)}")
    ap.add_argument("--db", default="", help="SQLite file for the studies (reused if it exists)")
    ap.add_argument(
        "--lock",
        default=str(LOCK),
        help="benchmark lock file; '' runs without it (e.g. two processes on disjoint --only)",
    )
    ap.add_argument("--enqueue-init", action="store_true", help="λ = 0.3 as every first trial")
    ap.add_argument("--out", default=str(HERE / "results" / "sample_efficiency.json"))
    ap.add_argument(
        "--merge", nargs="+", default=[], help="only merge these result files' studies into --out"
    )
    args = ap.parse_args()
    if args.merge:
        merge_results([Path(p) for p in args.merge], Path(args.out))
        return
    if not zoo_dir(args.zoo).exists():  # never start a (second) zoo build from a benchmark
        raise SystemExit(f"sample_efficiency: build the zoo first: mergesweep zoo build {args.zoo}")
    torch.set_num_threads(1)
    keys = [k for k in args.only.split(",") if k] or list(STUDIES)
    unknown = sorted(set(keys) - set(STUDIES))
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(STUDIES)}")
    budgets = {k: args.random_trials if k == "random" else args.trials for k in STUDIES}
    for item in args.budget:
        k, _, n = item.partition("=")
        if k not in STUDIES or not n.isdigit():
            raise SystemExit(f"--budget: expected KEY=TRIALS with KEY in {', '.join(STUDIES)}")
        budgets[k] = int(n)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "sample_efficiency.db"
    storage = f"sqlite:///{db.resolve()}"
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("studies", {})
    for key in keys:
        for seed in args.seeds:
            print(f"== {key} seed {seed} ({budgets[key]} trials)", flush=True)
            cfg = study_config(args.zoo, key, seed, budgets[key], storage, args.enqueue_init)
            with bench_lock(Path(args.lock) if args.lock else None):
                res = run_study(cfg)
            results["studies"].setdefault(key, {})[str(seed)] = res
            print(json.dumps({k: v for k, v in res.items() if k != "best_so_far"}), flush=True)
            results["summary"] = summarise(results["studies"])
            results["settings"] = {
                "zoo": args.zoo,
                "objective": "mean validation accuracy, 200 fixed examples per task (seeded)",
                "test": "whole test splits (topic 300, sentiment 500, language 300)",
                "budgets": budgets,
                "enqueue": "λ = 0.3 first" if args.enqueue_init else "nothing",
                "initial_random": 10,
                "target": f"{TARGET:.0%} of the same seed's random-search best",
                "executor": "inline, 1 torch thread",
                "storage": "SQLite",
            }
            results["machine"] = machine()
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
