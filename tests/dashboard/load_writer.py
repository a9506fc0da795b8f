"""A sweep-like writer for the concurrency test: ``python load_writer.py URL STUDY TRIALS``.

Writes trials the way the driver does (ask, user attrs, tell, figures every 10 trials) through
:func:`mergesweep.storage.open_storage`, as fast as it can, and exits 1 printing the error on
the first failure (e.g. "database is locked").
"""

from __future__ import annotations

import sys
import traceback

import optuna

from mergesweep.dashboard import publish_figures
from mergesweep.figures import study_figures
from mergesweep.storage import open_storage


def main(url: str, name: str, trials: int) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=0)  # cheap asks: the load is the storage
    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler)
    dists = {f"lambda.e{i}": optuna.distributions.FloatDistribution(0, 1) for i in range(4)}
    try:
        for i in range(trials):
            trial = study.ask(dists)
            values = [trial.params["lambda.e0"], 1 - trial.params["lambda.e1"] ** 2]
            trial.set_user_attr("metrics", {"low": values[0], "parity": values[1]})
            trial.set_user_attr("timings", {"merge_s": 0.001, "eval_s": 0.01})
            study.tell(trial, values)
            if i % 10 == 9:
                publish_figures(study, study_figures(study))
    except Exception:
        traceback.print_exc()
        return 1
    print(f"wrote {trials} trials", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
