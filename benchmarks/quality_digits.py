"""Held-out quality of merge methods and coefficient searches on the digits zoo.

Every method picks its coefficients the way it prescribes, then the merged model is scored on
the held-out test split (297 images, accuracy per task and average):

* task arithmetic: one λ for all experts, the best of {0, 0.05, …, 1} on validation accuracy;
* TIES (density 0.2, disjoint mean): the best λ of {0.1, 0.2, …, 2.0} on validation accuracy;
* Fisher-weighted averaging (256 validation examples per task, equal λ);
* DF-Merge: ``experiments/dfmerge_digits.yaml`` (BO, 10 + 50 trials; also with λ = 0.3 enqueued
  as the first point, and with UCB), and its ablation without the Fisher (the same BO over
  per-model λ of task arithmetic);
* AdaMerging task-wise and layer-wise (per tensor): ``experiments/adamerging_*_digits.yaml``
  (entropy on the unlabelled test inputs, as in the paper; no labels are read), also with
  lr 0.01 and as AdaMerging++ (TIES-trimmed τ);
* BO over a layer-wise space (``experiments/bo_layerwise_digits.yaml``, 4 experts × 5 blocks),
  with each surrogate variant (``gp``, ``turbo``, ``saas``) and random search for reference.

    python benchmarks/quality_digits.py [--only dfmerge,adamerging_taskwise] [--saas-trials 40]

Writes benchmarks/results/quality_digits.json (``--only`` merges into the existing file).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from study_scores import Scorer, machine, trials_to

from mergesweep.api import load_config_dict, run
from mergesweep.plan import MergePlan
from mergesweep.spaces import build_space
from mergesweep.zoo import ensure_zoo

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE.parent / "experiments"
TASKS = ("low", "high", "parity", "loop")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def base_config(zoo: Path, storage: str, name: str, method: dict) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "storage": storage,
        "pool": {
            "base": str(zoo / "base"),
            "experts": {t: str(zoo / "experts" / t) for t in TASKS},
            "include": [r"vit\..*"],
        },
        "method": method,
        "objectives": {
            "tasks": {
                t: {"kind": "accuracy", "data": str(zoo / "data" / t), "split": "validation"}
                for t in TASKS
            }
        },
    }


def uniform_plan(scorer: Scorer, lam: float) -> MergePlan:
    return MergePlan.uniform(scorer.ev.pool.layout.num_tensors, [lam] * len(TASKS))


def grid_method(zoo, storage, name, method, grid) -> dict[str, Any]:
    t0 = time.perf_counter()
    scorer = Scorer(base_config(zoo, storage, name, method))
    vals = {
        lam: float(np.mean(list(scorer.val(uniform_plan(scorer, lam)).values()))) for lam in grid
    }
    best = max(vals, key=lambda k: (vals[k], -k))
    out = {"chosen": {"lambda": best}, "val_avg": vals[best], "val_curve": vals}
    out.update(scorer.test_scores(uniform_plan(scorer, best)))
    out["evaluations"], out["wall_s"] = len(grid), time.perf_counter() - t0
    return out


def study_method(zoo, storage, experiment: str, name: str, overrides=()) -> dict[str, Any]:
    """Run an experiment file as a study, then score its best (or final) trial on test."""
    ov = [f"storage={storage}", f"name={name}", *overrides]
    cfg = load_config_dict(EXPERIMENTS / f"{experiment}.yaml", ov)
    t0 = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial
    scorer = Scorer(cfg)
    space = build_space(cfg["space"]["kind"], scorer.ev.pool.layout, cfg["space"]["options"])
    plan = space.to_plan(best.params)
    out: dict[str, Any] = {"trials": len(study.trials), "complete": len(complete)}
    out["best_trial"], out["wall_s"] = best.number, wall
    out["recorded_metrics"] = best.user_attrs.get("metrics")
    out["val_avg"] = float(np.mean(list(scorer.val(plan).values())))
    out.update(scorer.test_scores(plan))
    p = np.array(list(best.params.values()))
    out["coefficients"] = {"mean": float(p.mean()), "min": float(p.min()), "max": float(p.max())}
    if len(best.params) <= 8:
        out["chosen"] = {k: round(v, 4) for k, v in best.params.items()}
    if len(study.directions) == 1 and study.direction.name == "MAXIMIZE" and len(complete) > 1:
        values = [t.value for t in sorted(complete, key=lambda t: t.number)]
        run_best = np.maximum.accumulate(values)
        out["best_so_far"] = [round(float(v), 4) for v in run_best]
        out["trials_to_99pct"] = trials_to(run_best, 0.99 * run_best[-1])
        infos = [t.system_attrs.get("mergesweep_bo", {}) for t in complete]
        secs = [i["suggest_s"] for i in infos if "suggest_s" in i]
        if secs:
            out["suggest_s"] = {"median": float(np.median(secs)), "max": float(np.max(secs))}
    if "adamerging" in best.user_attrs:
        recs = sorted(study.trials, key=lambda t: t.user_attrs["adamerging"]["step"])
        out["entropy_curve"] = {
            t.user_attrs["adamerging"]["step"]: round(sum(t.user_attrs["entropy"].values()), 4)
            for t in recs
        }
    if cfg["space"]["kind"] == "layerwise":
        out["by_depth"] = depth_profile(best.params)
    return out


def depth_profile(params: dict[str, float]) -> dict[str, float]:
    """Mean λ by depth (embeddings, each layer, the final norm): shallow vs deep."""
    groups: dict[str, list[float]] = {}
    for name, v in params.items():
        m = re.search(r"layers\.(\d+)\.|\.layer(\d+)$", name)
        label = f"layer{m.group(1) or m.group(2)}" if m else "embed" if "embed" in name else "final"
        groups.setdefault(label, []).append(v)
    order = ["embed", *sorted(k for k in groups if k.startswith("layer")), "final"]
    return {k: round(float(np.mean(groups[k])), 4) for k in order if k in groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated method keys (default: all)")
    ap.add_argument("--storage", default="", help="study storage (default: a temporary SQLite)")
    ap.add_argument("--saas-trials", type=int, default=40, help="budget of the SAAS variant")
    ap.add_argument("--out", default=str(HERE / "results" / "quality_digits.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    zoo = ensure_zoo("digits")
    storage = args.storage or f"sqlite:///{tempfile.mkdtemp()}/quality.db"
    grid_ta = [round(x, 2) for x in np.arange(0, 1.0001, 0.05)]
    grid_ties = [round(x, 1) for x in np.arange(0.1, 2.0001, 0.1)]
    runs = {
        "task_arithmetic": lambda: grid_method(
            zoo, storage, "ta", {"name": "task_arithmetic"}, grid_ta
        ),
        "ties": lambda: grid_method(
            zoo, storage, "ties", {"name": "ties", "options": {"density": 0.2}}, grid_ties
        ),
        "fisher": lambda: grid_method(
            zoo, storage, "fisher", {"name": "fisher", "options": {"samples": 256}}, [1.0]
        ),
        "dfmerge": lambda: study_method(zoo, storage, "dfmerge_digits", "dfmerge"),
        "dfmerge_init": lambda: study_method(
            zoo, storage, "dfmerge_digits", "dfmerge_init", ["searcher.enqueue=[init]"]
        ),
        "dfmerge_ucb": lambda: study_method(
            zoo, storage, "dfmerge_digits", "dfmerge_ucb", ["searcher.options.acquisition=ucb"]
        ),
        "dfmerge_nofisher": lambda: study_method(
            zoo, storage, "dfmerge_digits", "dfmerge_nofisher", ["method.options.fisher=false"]
        ),
        "adamerging_taskwise": lambda: study_method(
            zoo, storage, "adamerging_taskwise_digits", "ada_task"
        ),
        "adamerging_layerwise": lambda: study_method(
            zoo, storage, "adamerging_layerwise_digits", "ada_layer"
        ),
        "adamerging_taskwise_lr0.01": lambda: study_method(
            zoo, storage, "adamerging_taskwise_digits", "ada_task_lr", ["searcher.options.lr=0.01"]
        ),
        "adamerging_layerwise_lr0.01": lambda: study_method(
            zoo,
            storage,
            "adamerging_layerwise_digits",
            "ada_layer_lr",
            ["searcher.options.lr=0.01"],
        ),
        "adamerging_layerwise_pp": lambda: study_method(
            zoo,
            storage,
            "adamerging_layerwise_digits",
            "ada_layer_pp",
            ["method.name=ties", "method.options={density: 0.2, merge: sum}"],
        ),
        "bo_layerwise_gp": lambda: study_method(
            zoo, storage, "bo_layerwise_digits", "bo_gp", ["searcher.options.model=gp"]
        ),
        "bo_layerwise_turbo": lambda: study_method(
            zoo, storage, "bo_layerwise_digits", "bo_turbo", ["searcher.options.model=turbo"]
        ),
        "bo_layerwise_saas": lambda: study_method(
            zoo,
            storage,
            "bo_layerwise_digits",
            "bo_saas",
            ["searcher.options.model=saas", f"budget.trials={args.saas_trials}"],
        ),
        "random_layerwise": lambda: study_method(
            zoo,
            storage,
            "bo_layerwise_digits",
            "random",
            ["searcher.name=random", "searcher.options={}"],
        ),
    }
    only = [k for k in args.only.split(",") if k]
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if only and out_path.exists() else {}
    results.setdefault("methods", {})
    for key in only or runs:
        print(f"== {key}", flush=True)
        res = runs[key]()
        results["methods"][key] = res
        print(json.dumps({k: v for k, v in res.items() if k not in ("best_so_far", "val_curve")}))
        results["machine"] = machine()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
