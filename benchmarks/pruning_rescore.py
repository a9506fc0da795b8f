"""Were the pruned trials really worse? Re-score every pruned trial of a ``pruning_wall_time.py``
study on the full validation subsets and compare it with the best complete value at the moment
it was pruned.

A pruned trial that ends at or above that best is a false prune: the pruner stopped a trial
that could have become the new best. Per seed: pruned trials, false prunes, the best full value
among the pruned, and a histogram of (full value − best of its time).

    python benchmarks/pruning_rescore.py --db /tmp/pr/pruning.db --tag contg5 [--seeds 0 1 2]
        [--threads 1]

Reads the pruned studies ``pr_pruned_<tag>_s<seed>`` (``--tag ''``: ``pr_pruned_s<seed>``).
Writes benchmarks/results/pruning_rescore.json (one entry per tag, merged into the file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from pruning_wall_time import config
from study_scores import Scorer, machine

from mergesweep.spaces import build_space

HERE = Path(__file__).resolve().parent
BINS = [-1.0, -0.03, -0.02, -0.01, -0.005, -1e-9, 1e-9, 1.0]  # gap edges (study value units)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def rescore(study: optuna.Study, scorer: Scorer, space: Any) -> dict[str, Any]:
    """Every pruned trial's full-subset value against the best complete value of its time."""
    finished = sorted(
        (t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: t.datetime_complete,
    )
    best, gaps = float("-inf"), []
    for t in finished:
        if t.state == TrialState.COMPLETE:
            best = max(best, float(t.value))
        elif best > float("-inf"):
            full = float(np.mean(list(scorer.val(space.to_plan(t.params)).values())))
            gaps.append(full - best)
    arr = np.array(gaps)
    return {
        "pruned": len(gaps),
        "false_prunes": int((arr >= -1e-9).sum()),
        "within_0.005": int((arr >= -0.005).sum()),
        "within_0.01": int((arr >= -0.01).sum()),
        "gap_max": round(float(arr.max()), 4) if len(arr) else None,
        "gap_histogram": {
            "edges": BINS,
            "counts": np.histogram(arr, bins=BINS)[0].tolist(),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", required=True, help="pruning_wall_time.py's SQLite file")
    ap.add_argument("--tag", required=True, help="the pruned studies' tag ('' for none)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "pruning_rescore.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    storage = f"sqlite:///{Path(args.db).resolve()}"
    names = optuna.get_all_study_names(storage)
    plain = argparse.Namespace(tag="", threads=args.threads, pruner="", rungs=[], set=[])
    seeds: dict[str, Any] = {}
    for seed in args.seeds:
        name = f"pr_pruned_{args.tag + '_' if args.tag else ''}s{seed}"
        if name not in names:
            raise SystemExit(f"pruning_rescore: no study {name} in {args.db}")
        cfg = config("plain", seed, 1, storage, plain)  # the same pool, subsets and space
        scorer = Scorer(cfg)
        space = build_space(cfg["space"]["kind"], scorer.ev.pool.layout, cfg["space"]["options"])
        study = optuna.load_study(study_name=name, storage=storage)
        seeds[str(seed)] = rescore(study, scorer, space)
        print(seed, json.dumps(seeds[str(seed)]), flush=True)
    path = Path(args.out)
    out = json.loads(path.read_text()) if path.exists() else {"benchmark": "pruning_rescore"}
    out.setdefault("tags", {})[args.tag] = {
        "command": f"python benchmarks/pruning_rescore.py --db PATH --tag {args.tag} --seeds "
        + " ".join(map(str, args.seeds)),
        "machine": machine(),
        "seeds": seeds,
        "false_prunes": sum(s["false_prunes"] for s in seeds.values()),
        "pruned": sum(s["pruned"] for s in seeds.values()),
    }
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
