"""The Pareto, MAP and Evo-Merging experiment files open as studies (config, space,
searcher and objectives all valid) without running a trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesweep.api import load_config_dict
from mergesweep.study import open_study

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
EXPECT = {
    "map_digits": ("map", 30, 4),
    "map_bayesian_digits": ("map_bayesian", 30, 4),
    "map_nested_digits": ("map_nested", 67, 4),
    "nsga2_pareto_digits": ("nsga2", None, 4),
    "evo_merging_digits": ("evo_merging", 1200, 1),
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_experiment_opens(name: str, digits_zoo, tmp_path) -> None:
    cfg = load_config_dict(EXPERIMENTS / f"{name}.yaml", [f"storage=sqlite:///{tmp_path}/s.db"])
    setup = open_study(cfg)
    searcher, cap, objectives = EXPECT[name]
    assert setup.searcher.name == searcher
    assert setup.searcher.max_trials(setup.space) == cap
    assert len(setup.directions) == objectives
