"""How much any pruner could save on ``pruning_wall_time.py``'s studies: an oracle bound, and
how far apart the trials really are.

Reads the SQLite file of a ``pruning_wall_time.py`` run (``--db``). Per seed, from the plain
study (no pruning; its best value is the **target**):

* **oracle bound**: the speed-up to the target if every trial until the one that reaches it
  had been stopped at a rung (``--fractions``, cost: that fraction of its merge + evaluation
  time) exactly when its full-subset value ends more than ``δ`` (``--gaps``) below the target,
  on the plain study's own trajectory. A real pruner only sees the rung's examples, so it
  cannot do better than the oracle for a ``δ`` it cannot resolve;
* the share of trials after the sampler's startup within 0.01 and 0.02 of the target.

And from the paired-pruner study (``--paired-tag``, whose complete trials store every
example's metric): per complete trial against that study's best, the share of examples on
which the two disagree, the gap of their means and the standard error of that gap on the
full subsets (paired). A gap a pruner must resolve at a rung is at least that standard error
times ``sqrt(1 / fraction)``.

    python benchmarks/pruning_bound.py --db /tmp/pr/pruning.db [--seeds 0 2] [--paired-tag p90]

Writes benchmarks/results/pruning_bound.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from study_scores import machine

HERE = Path(__file__).resolve().parent
STARTUP = 8  # experiments/pruning_text.yaml: TPE's n_startup_trials
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: t.number)


def oracle(plain: optuna.Study, fractions: list[float], gaps: list[float]) -> dict[str, Any]:
    """The plain study's trials until the target, re-costed as if an oracle had pruned."""
    trials = _complete(plain)
    target = max(t.value for t in trials)
    hit = next(i for i, t in enumerate(trials) if t.value >= target)
    upto = trials[: hit + 1]
    cost = np.array(
        [
            t.user_attrs["timings"]["eval_s"] + t.user_attrs["timings"].get("merge_s", 0.0)
            for t in upto
        ]
    )
    values = np.array([t.value for t in upto])
    after = values[STARTUP:]
    bound = {
        f"rung {f:g}, gap {d:g}": round(
            float(cost.sum() / np.where(values < target - d, f * cost, cost).sum()), 2
        )
        for f in fractions
        for d in gaps
    }
    return {
        "target": round(target, 4),
        "trials_to_target": hit + 1,
        "within_0.01": round(float(np.mean(after >= target - 0.01)), 2),
        "within_0.02": round(float(np.mean(after >= target - 0.02)), 2),
        "oracle_speedup": bound,
    }


def paired(study: optuna.Study) -> dict[str, Any]:
    """Per complete trial against the study's best: disagreement, gap and its standard error."""
    trials = [t for t in _complete(study) if "examples" in t.user_attrs]
    best = max(trials, key=lambda t: t.value)
    ref = best.user_attrs["examples"]
    rows = []
    for t in trials:
        if t.number == best.number:
            continue
        d = np.concatenate([np.subtract(t.user_attrs["examples"][k], ref[k]) for k in ref])
        rows.append((np.mean(d != 0), d.mean(), d.std(ddof=1) / np.sqrt(len(d))))
    arr = np.array(rows)
    return {
        "best": round(best.value, 4),
        "trials": len(rows),
        "disagree_median": round(float(np.median(arr[:, 0])), 4),
        "gap_median": round(float(np.median(arr[:, 1])), 4),
        "gap_se_full_median": round(float(np.median(arr[:, 2])), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", required=True, help="pruning_wall_time.py's SQLite file")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--paired-tag", default="", help="tag of a paired-pruner run in the file")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--gaps", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    ap.add_argument("--out", default=str(HERE / "results" / "pruning_bound.json"))
    args = ap.parse_args()
    storage = f"sqlite:///{Path(args.db).resolve()}"
    names = optuna.get_all_study_names(storage)
    seeds: dict[str, Any] = {}
    for seed in args.seeds:
        if f"pr_plain_s{seed}" not in names:
            raise SystemExit(f"pruning_bound: no study pr_plain_s{seed} in {args.db}")
        rec = oracle(
            optuna.load_study(study_name=f"pr_plain_s{seed}", storage=storage),
            args.fractions,
            args.gaps,
        )
        name = f"pr_pruned_{args.paired_tag}_s{seed}"
        if args.paired_tag and name in names:
            rec["paired"] = paired(optuna.load_study(study_name=name, storage=storage))
        seeds[str(seed)] = rec
        print(seed, json.dumps(rec), flush=True)
    out = {
        "benchmark": "pruning_bound",
        "command": "python benchmarks/pruning_bound.py --db PATH --seeds "
        + " ".join(map(str, args.seeds))
        + (f" --paired-tag {args.paired_tag}" if args.paired_tag else ""),
        "experiment": "experiments/pruning_text.yaml",
        "machine": machine(),
        "seeds": seeds,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
