"""MAP's predicted front vs a dense grid, and Evo-Merging vs task arithmetic and TIES (digits).

Part 1 (issue "The seeds' searchers II"): on the digits zoo with 2 experts (low, high) and with
all 4, every study is a Pareto study (validation accuracy per task). A dense grid of real
evaluations (``grid`` searcher: 11² = 121 points for 2 experts, 5⁴ = 625 for 4) gives the
reference front. MAP (``map``, (N+1)(N+2) evaluations), Bayesian MAP (same budget) and, for 4
experts, Bayesian MAP with 2× and 4× the budget (the full design, then residual-directed
points) and nested MAP are compared by hypervolume against
two reference points shared by all (the base model's scores, and the grid's worst score per
task): the predicted front's hypervolume (surrogate scores), the hypervolume of the predicted
front's points evaluated for real together with the method's own trials (``--reeval`` points
spread along the front, extra evaluations reported apart) and of the method's trials alone.
Target: ≥ 0.9 of the grid's hypervolume with ≤ 25 % of its evaluations.

Part 2: Evo-Merging (two-stage CMA-ES, magnitude top-k, fitness = mean validation
cross-entropy + 0.05·mean|x|) at reduced budgets against task arithmetic and TIES (d = 0.2),
whose single λ is chosen on the same validation cross-entropy from {0.1, …, 1.0}; all are then
scored on the test split (accuracy and cross-entropy per task).

    python benchmarks/map_front.py [--grid4 5] [--stage1 100 --stage2 200] [--reeval 20] [--db F]

Writes benchmarks/results/map_front.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

import mergesweep
from mergesweep.pareto import PARETO_ATTR, hypervolume, nondominated
from mergesweep.plan import MergePlan
from mergesweep.runtime.base import Job
from mergesweep.runtime.worker import Evaluator
from mergesweep.storage import open_storage
from mergesweep.study import open_study
from mergesweep.zoo import ensure_zoo

HERE = Path(__file__).resolve().parent
TASKS4 = ("low", "high", "parity", "loop")


def config(zoo: Path, tasks, storage: str, name: str, searcher: dict, **extra) -> dict[str, Any]:
    cfg = {
        "name": name,
        "seed": 0,
        "storage": storage,
        "pool": {
            "base": str(zoo / "base"),
            "experts": {t: str(zoo / "experts" / t) for t in tasks},
            "include": [r"vit\..*"],
        },
        "space": {"kind": "modelwise", "options": {"low": 0.0, "high": 1.0}},
        "objectives": {
            "mode": "pareto",
            "tasks": {t: {"kind": "accuracy", "data": str(zoo / "data" / t)} for t in tasks},
        },
        "searcher": searcher,
        "budget": {"trials": 10_000},
        "executor": {"kind": "inline", "threads": 1},
    }
    cfg.update(extra)
    return cfg


def _study(cfg: dict[str, Any]) -> optuna.Study:
    return optuna.load_study(study_name=cfg["name"], storage=open_storage(cfg["storage"]))


def _values(study: optuna.Study) -> np.ndarray:
    return np.array([t.values for t in study.get_trials(states=(TrialState.COMPLETE,))])


def front_part(
    zoo: Path, tasks, grid_points: int, storage: str, reeval: int, multiples: list[float]
) -> dict[str, Any]:
    dirs = ["maximize"] * len(tasks)
    out: dict[str, Any] = {"tasks": list(tasks)}
    t0 = time.perf_counter()
    grid_cfg = config(
        zoo,
        tasks,
        storage,
        f"grid{len(tasks)}",
        {"name": "grid", "options": {"points": grid_points}},
    )
    mergesweep.run(grid_cfg)
    grid = _study(grid_cfg)
    gv = _values(grid)
    # Two reference points: the base model's scores (stored by the study) and the grid's worst
    # score per task (the nadir of every evaluation: the whole trade-off surface counts).
    refs = {"base": grid.user_attrs[PARETO_ATTR]["reference"], "worst": gv.min(axis=0).tolist()}
    hv_grid = {k: hypervolume(gv, r, dirs) for k, r in refs.items()}
    out["reference"] = refs
    out["grid"] = {
        "evaluations": len(gv),
        "front_size": int(nondominated(gv, dirs).sum()),
        "hypervolume": hv_grid,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    n = len(tasks)
    design = (n + 1) * (n + 2)
    variants = {"map": {"name": "map"}, "map_bayesian": {"name": "map_bayesian"}}
    if n > 2:
        for k in multiples:  # the full design, then (k − 1)× as many residual-directed points
            variants[f"map_bayesian_{k:g}x"] = {
                "name": "map_bayesian",
                "options": {"initial_points": design, "extra_points": round((k - 1) * design)},
            }
        variants["map_nested"] = {"name": "map_nested"}
    for name, searcher in variants.items():
        t0 = time.perf_counter()
        cfg = config(zoo, tasks, storage, f"{name}{len(tasks)}", searcher)
        mergesweep.run(cfg)
        study = _study(cfg)
        ev = _values(study)
        rec = study.user_attrs["map"]
        pred = np.array([[f["predicted"][t] for t in tasks] for f in rec["front"]])
        row: dict[str, Any] = {
            "evaluations": len(ev),
            "evaluation_share_of_grid": round(len(ev) / len(gv), 4),
            "r2_heldout": rec["r2"],
            "predicted_front_size": len(pred),
        }
        # The predicted front's points, evaluated for real (validation only, not counted).
        setup = open_study(cfg, create=False)
        evaluator = Evaluator(setup.config, setup.layout)
        picks = np.unique(np.linspace(0, len(pred) - 1, min(reeval, len(pred))).round().astype(int))
        real = []
        for i in picks:
            plan = setup.space.to_plan(rec["front"][i]["params"])
            res = evaluator.evaluate(Job(-1, plan))
            real.append([res.metrics[t] for t in tasks])
        row["reevaluated_points"] = len(real)
        row["evaluation_share_with_reevaluated"] = round((len(ev) + len(real)) / len(gv), 4)
        both = np.vstack([real, ev])
        for k, ref in refs.items():
            hv = {
                "predicted": hypervolume(pred, ref, dirs),
                "evaluated_trials": hypervolume(ev, ref, dirs),
                "predicted_points_real": hypervolume(both, ref, dirs),
            }
            row[f"hv_{k}"] = hv
            row[f"ratio_{k}"] = {h: round(v / hv_grid[k], 4) for h, v in hv.items()}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        out[name] = row
        print(name, len(tasks), json.dumps(row))
    return out


def _test_objectives(zoo: Path, tasks) -> dict[str, Any]:
    objs = {}
    for t in tasks:
        for kind, key in (("accuracy", "acc"), ("cross_entropy", "ce")):
            objs[f"{key}.{t}"] = {
                "kind": kind,
                "head": t,
                "data": str(zoo / "data" / t),
                "split": "test",
            }
    return {"mode": "pareto", "tasks": objs}


def _evaluator(zoo: Path, storage: str, method: dict, split_objs: dict) -> Evaluator:
    cfg = config(
        zoo, TASKS4, storage, "eval", {"name": "random"}, method=method, objectives=split_objs
    )
    cfg["space"] = {"kind": "density"}
    return Evaluator(mergesweep.api.load_config_dict(cfg))


def _scores(ev: Evaluator, plan: MergePlan) -> dict[str, float]:
    res = ev.evaluate(Job(-1, plan))
    assert res.ok, res.error
    return res.metrics


def _summary(metrics: dict[str, float], prefix: str) -> dict[str, Any]:
    per = {k.split(".", 1)[1]: round(v, 4) for k, v in metrics.items() if k.startswith(prefix)}
    return {"per_task": per, "mean": round(float(np.mean(list(per.values()))), 4)}


def evo_part(zoo: Path, storage: str, stage1: int, stage2: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    root = HERE.parent / "experiments" / "evo_merging_digits.yaml"
    cfg = mergesweep.api.load_config_dict(
        root,
        [
            f"storage={storage}",
            f"searcher.options.stage1_trials={stage1}",
            f"searcher.options.stage2_trials={stage2}",
            f"budget.trials={stage1 + stage2}",
            f"pool.base={zoo}/base",
            *(f"pool.experts.{t}={zoo}/experts/{t}" for t in TASKS4),
            *(f"objectives.tasks.{t}.data={zoo}/data/{t}" for t in TASKS4),
        ],
    )
    mergesweep.run(cfg)
    study = _study(cfg)
    best = study.best_trial
    val_ce = float(np.mean(list(best.user_attrs["metrics"].values())))
    setup = open_study(cfg, create=False)
    evo_wall = time.perf_counter() - t0
    n = len(TASKS4)
    val = {
        "mode": "mean",
        "tasks": {
            t: {"kind": "cross_entropy", "data": str(zoo / "data" / t), "samples": 300}
            for t in TASKS4
        },
    }
    test = _test_objectives(zoo, TASKS4)
    layout = setup.layout
    out: dict[str, Any] = {"budgets": {"stage1": stage1, "stage2": stage2}}
    stage = setup.searcher.stages(setup.space)
    out["evo_merging"] = {
        "trial": best.number,
        "params": {k: round(v, 4) for k, v in best.params.items()},
        "stage": stage.stage_of(best.params),
        "val_cross_entropy": round(val_ce, 4),
        "fitness": round(best.value, 4),
        "wall_s": round(evo_wall, 1),
    }
    ev = _evaluator(zoo, storage, {"name": "magnitude"}, test)
    m = _scores(ev, setup.space.to_plan(best.params))
    out["evo_merging"]["test_accuracy"] = _summary(m, "acc.")
    out["evo_merging"]["test_cross_entropy"] = _summary(m, "ce.")
    for label, method in (
        ("task_arithmetic", {"name": "task_arithmetic"}),
        ("ties", {"name": "ties", "options": {"density": 0.2}}),
    ):
        vev = _evaluator(zoo, storage, method, val)
        grid = [round(0.1 * k, 1) for k in range(1, 11)]
        ces = []
        for lam in grid:
            plan = MergePlan(np.full((layout.num_tensors, n), lam))
            ces.append(float(np.mean(list(_scores(vev, plan).values()))))
        lam = grid[int(np.argmin(ces))]
        tev = _evaluator(zoo, storage, method, test)
        m = _scores(tev, MergePlan(np.full((layout.num_tensors, n), lam)))
        out[label] = {
            "lambda": lam,
            "val_cross_entropy": round(min(ces), 4),
            "test_accuracy": _summary(m, "acc."),
            "test_cross_entropy": _summary(m, "ce."),
        }
        print(label, json.dumps(out[label]))
    print("evo_merging", json.dumps(out["evo_merging"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid2", type=int, default=11, help="grid points per λ, 2 experts")
    parser.add_argument("--grid4", type=int, default=5, help="grid points per λ, 4 experts")
    parser.add_argument("--reeval", type=int, default=20, help="predicted points re-evaluated")
    parser.add_argument(
        "--bayesian-x",
        type=float,
        nargs="+",
        default=[2, 4, 4.5, 5],
        help="4 experts: Bayesian MAP variants with k× the design's evaluations",
    )
    parser.add_argument("--stage1", type=int, default=100)
    parser.add_argument("--stage2", type=int, default=200)
    parser.add_argument("--skip-evo", action="store_true")
    parser.add_argument("--db", default=None, help="SQLite file for the studies (default: temp)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    zoo = ensure_zoo("digits", progress=False, threads=1)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "settings": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        # --db keeps the studies (a second run reuses the complete ones).
        storage = f"sqlite:///{args.db or Path(tmp) / 'bench.db'}"
        result["front_2_experts"] = front_part(
            zoo, ("low", "high"), args.grid2, storage, args.reeval, []
        )
        result["front_4_experts"] = front_part(
            zoo, TASKS4, args.grid4, storage, args.reeval, args.bayesian_x
        )
        out = HERE / "results" / "map_front.json"
        if args.skip_evo and out.exists():  # keep the last Evo-Merging figures, marked as such
            old = json.loads(out.read_text())
            if "evo_merging_4_experts" in old:
                evo = old["evo_merging_4_experts"]
                result["evo_merging_4_experts"] = {**evo, "from": old["date"]}
        if not args.skip_evo:
            result["evo_merging_4_experts"] = evo_part(zoo, storage, args.stage1, args.stage2)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
