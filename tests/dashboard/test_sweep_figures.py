"""Figures of a real sweep: what the driver published, and ``mergesweep show --plot``."""

from __future__ import annotations

import json

import optuna
import pytest
from click.testing import CliRunner

from mergesweep.cli import main
from mergesweep.figures import study_figures, study_space

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def test_driver_published_the_final_figures(pareto_sweep) -> None:
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    study = pareto_sweep.study
    attrs = study._storage.get_study_system_attrs(study._study_id)
    stored = {k: json.loads(v) for k, v in get_plotly_graph_objects(attrs).items()}
    space, layout, why = study_space(study)
    assert why is None and space.kind == "layerwise" and space.dim == 10
    fresh = study_figures(study, space=space, layout=layout)
    # Refreshed after the last trial: the stored figures are today's figures.
    assert set(stored) == {
        f"mergesweep-{k}" for k in ("hypervolume", "best", "coefficients", "tasks")
    }
    for key in ("hypervolume", "best", "coefficients", "tasks"):
        assert stored[f"mergesweep-{key}"] == fresh[key], key
    last = max(t.number for t in study.trials)
    assert stored["mergesweep-best"]["data"][0]["x"][-1] == last


def test_show_plot_writes_png_and_html(pareto_sweep, tmp_path) -> None:
    runner = CliRunner()
    for name in ("report.png", "report.html"):
        out = tmp_path / name
        result = runner.invoke(
            main, ["show", pareto_sweep.name, "--storage", pareto_sweep.url, "--plot", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert "wrote 5 figures (front, hypervolume, best, coefficients, tasks)" in result.output
        assert "Pareto front" in result.output  # the table is still printed
        assert out.stat().st_size > 30_000
    page = (tmp_path / "report.html").read_text()
    assert 'id="mergesweep-coefficients"' in page and "Coefficients of trial" in page
    bad = runner.invoke(
        main,
        [
            "show",
            pareto_sweep.name,
            "--storage",
            pareto_sweep.url,
            "--plot",
            str(tmp_path / "r.pdf"),
        ],
    )
    assert (
        bad.exit_code == 2
        and "error: --plot: " in bad.output
        and "must end in .html" in (bad.output)
    )


def test_show_plot_without_a_space_skips_the_heatmap(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(storage=url, study_name="plain", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    out = tmp_path / "plain.png"
    result = CliRunner().invoke(main, ["show", "plain", "--storage", url, "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: no coefficient heatmap (the study was not made by mergesweep)" in result.output
    assert "wrote 1 figure (best)" in result.output and out.stat().st_size > 10_000


def test_map_sweep_publishes_its_predicted_front(digits_zoo, tmp_path) -> None:
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    from mergesweep.api import run

    from .conftest import sweep_config

    cfg = sweep_config(digits_zoo, tmp_path, "map2", trials=12)
    cfg["space"] = {"kind": "modelwise"}
    cfg["searcher"] = {"name": "map", "options": {"population": 12, "generations": 5}}
    run(cfg)
    study = optuna.load_study(study_name="map2", storage=cfg["storage"])
    record = study.user_attrs["map"]
    attrs = study._storage.get_study_system_attrs(study._study_id)
    stored = json.loads(get_plotly_graph_objects(attrs)["mergesweep-front"])
    evaluated, observed, predicted = stored["data"]
    assert predicted["name"] == "MAP predicted front"
    assert observed["name"] == "Pareto front (evaluated)" and 1 <= len(observed["x"]) <= 12
    expected = sorted((f["predicted"]["low"], f["predicted"]["parity"]) for f in record["front"])
    assert list(zip(predicted["x"], predicted["y"])) == [tuple(p) for p in expected]
    assert (
        len(evaluated["x"]) == 12
        and f"from {record['evaluations']} evaluations" in (stored["layout"]["title"]["text"])
    )
