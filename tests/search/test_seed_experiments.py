"""The DF-Merge, AdaMerging and layer-wise BO experiment files: valid as written, and the
DF-Merge recipe runs end to end through the CLI (random points, then a BO step)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from mergesweep.api import load_config_dict
from mergesweep.cli import main
from mergesweep.study import open_study

pytest.importorskip("botorch")
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
EXPECT = {  # searcher, method, space dimension
    "dfmerge_digits": ("dfmerge", "dfmerge", 4),
    "adamerging_taskwise_digits": ("adamerging", "task_arithmetic", 4),
    "adamerging_layerwise_digits": ("adamerging", "task_arithmetic", 216),
    "bo_layerwise_digits": ("bo", "task_arithmetic", 20),
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_experiment_opens(name: str, digits_zoo, tmp_path) -> None:
    cfg = load_config_dict(EXPERIMENTS / f"{name}.yaml", [f"storage=sqlite:///{tmp_path}/s.db"])
    setup = open_study(cfg)
    searcher, method, dim = EXPECT[name]
    assert (setup.searcher.name, setup.cfg.method.name, setup.space.dim) == (searcher, method, dim)
    if searcher == "dfmerge":
        assert setup.cfg.budget.trials == 60 and setup.searcher.n_initial == 10


def test_dfmerge_recipe_runs_from_the_cli(digits_zoo, tmp_path) -> None:
    db = f"sqlite:///{tmp_path}/cli.db"
    args = [
        "run",
        str(EXPERIMENTS / "dfmerge_digits.yaml"),
        "budget.trials=3",
        "searcher.options.n_initial=2",
        "method.options.samples=4",
        *[f"objectives.tasks.{t}.samples=60" for t in ("low", "high", "parity", "loop")],
        "--storage",
        db,
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="dfmerge_digits", storage=db)
    kinds = [t.system_attrs["mergesweep_bo"]["kind"] for t in study.trials]
    assert kinds == ["random", "random", "gp"]
    assert all(t.user_attrs["timings"]["merge_s"] > 0 for t in study.trials)
    shown = CliRunner().invoke(main, ["show", "dfmerge_digits", "--storage", db, "--json"])
    assert shown.exit_code == 0
    assert json.loads(shown.output)  # the best trials as JSON
