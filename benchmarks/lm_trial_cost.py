"""Per-trial cost on the lm zoo through lm-eval: merge_s and eval_s (issue: Real models).

Runs experiments/lm_lmeval_cmaes.yaml (the lm zoo's GPT-2, 2 experts, layer-wise task
arithmetic, lm-eval multiple-choice objectives on fixed seeded subsets) with the inline executor
into a fresh SQLite file, and reports the trial timings the driver records: ``merge_s`` (the
in-place merge), ``eval_s`` (``lm_eval.evaluator.evaluate`` for both tasks through the worker's
reused HFLM), ``overhead_s`` (ask, plan, storage), and ``load_s`` (once: pool, tasks, HFLM);
then splits one trial's evaluation into the model's forward passes and lm-eval's own work.

    python benchmarks/lm_trial_cost.py [--trials 12] [--samples 150]

Writes benchmarks/results/lm_trial_cost.json. Builds the lm zoo first if needed (~4 min).
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
from mergesweep.zoo import ensure_zoo, zoo_manifest

HERE = Path(__file__).resolve().parent


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _breakdown(samples: int, repeats: int = 3) -> dict[str, float]:
    """Where ``eval_s`` goes: the model's forward passes (``HFLM._model_call``) vs the rest of
    ``lm_eval.evaluator.evaluate`` (request building, tokenization, scoring), per trial."""
    from mergesweep.objectives import build_objective
    from mergesweep.pool import ModelPool, PoolSpec

    zoo = ensure_zoo("lm", progress=False)
    torch.set_num_threads(1)
    pool = ModelPool(
        PoolSpec(
            base=str(zoo / "base"),
            experts={t: str(zoo / "experts" / t) for t in ("topic", "sentiment")},
        )
    )
    total = forward = 0.0
    for task in ("topic", "sentiment"):
        obj = build_objective(
            task,
            {
                "kind": "lmeval",
                "tasks": f"ms_{task}",
                "include_path": str(zoo / "tasks"),
                "num_fewshot": 0,
                "samples": samples,
                "dtype": "float32",
            },
        )
        obj.setup(pool, seed=0)
        lm = obj.lm(pool.model(task))
        inner = lm._model_call
        spent = [0.0]

        def timed(*a, _inner=inner, _spent=spent, **k):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **k)
            finally:
                _spent[0] += time.perf_counter() - t0

        lm._model_call = timed
        obj.evaluate(pool.model(task))  # warm-up
        spent[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(repeats):
            obj.evaluate(pool.model(task))
        total += (time.perf_counter() - t0) / repeats
        forward += spent[0] / repeats
        lm._model_call = inner
    return {"eval_s": total, "forward_s": forward, "lm_eval_rest_s": total - forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--samples", type=int, default=150, help="examples per lm-eval task")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ensure_zoo("lm", progress=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        start = time.perf_counter()
        summary = mergesweep.run(
            HERE.parent / "experiments" / "lm_lmeval_cmaes.yaml",
            [
                f"storage={url}",
                f"budget.trials={args.trials}",
                f"objectives.tasks.topic.samples={args.samples}",
                f"objectives.tasks.sentiment.samples={args.samples}",
            ],
        )
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name="lm_lmeval_cmaes", storage=open_storage(url))
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        timings = [t.user_attrs["timings"] for t in trials]
        best = max(trials, key=lambda t: t.value)
    manifest = zoo_manifest("lm")
    breakdown = _breakdown(args.samples)
    merge = [t["merge_s"] for t in timings]
    evals = [t["eval_s"] for t in timings]
    result = {
        "benchmark": "lm_trial_cost",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": 1,
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "command": f"python benchmarks/lm_trial_cost.py --trials {args.trials} "
        f"--samples {args.samples}",
        "config": "experiments/lm_lmeval_cmaes.yaml (inline executor, SQLite)",
        "model": {"params": manifest["params"], "experts": manifest["tasks"]},
        "eval": {
            "tasks": ["ms_topic", "ms_sentiment"],
            "samples_per_task": args.samples,
            "requests_per_trial": args.samples * 5 + args.samples * 3,  # one per choice
        },
        "trials": len(trials),
        "merge_s": _stats(merge),
        "eval_s": _stats(evals),
        "overhead_s_mean": summary.overhead_s / max(summary.complete, 1),
        "merge_fraction": statistics.mean(merge)
        / (statistics.mean(merge) + statistics.mean(evals)),
        "eval_breakdown_per_trial": breakdown,
        "load_s": timings[0].get("load_s"),
        "wall_s_total": wall,
        "best": {"trial": best.number, "value": best.value, "metrics": best.user_attrs["metrics"]},
    }
    out = HERE / "results" / "lm_trial_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
