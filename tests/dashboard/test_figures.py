"""Figures from hand-made studies: exact step curves, hypervolume, heatmap weights, bars, MAP."""

from __future__ import annotations

import json
import logging
import struct
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution

from mergesweep.dashboard import FigureRefresher, publish_figures
from mergesweep.errors import ConfigError
from mergesweep.figures import best_trial, block_coefficients, study_figures
from mergesweep.figures_file import write_figures
from mergesweep.pareto import PARETO_ATTR, hypervolume, study_hypervolume
from mergesweep.plan import MergePlan
from mergesweep.pool import PoolLayout
from mergesweep.spaces import build_space
from mergesweep.spaces.base import Param, Space
from mergesweep.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

# embed (16), layer0 (4 + 12), layer1 (8), final (4): sizes make the weighted means exact.
LAYOUT = PoolLayout(
    experts=("a", "b"),
    names=("emb.w", "enc.0.q", "enc.0.fc", "enc.1.q", "norm.w"),
    shapes=((4, 4), (4,), (3, 4), (8,), (4,)),
    fingerprint="x",
)
DIST = {"x": FloatDistribution(0.0, 1.0)}


def _study(directions, rows, *, storage=None, names=None, attrs=None):
    """A study whose trial i has values rows[i] and per-task metrics named like the values."""
    study = optuna.create_study(directions=directions, storage=storage)
    names = names or [f"t{i}" for i in range(len(directions))]
    if len(directions) > 1 or names != ["t0"]:
        study.set_metric_names(names)
    for values in rows:
        metrics = dict(zip(names, values)) if len(values) == len(names) else {}
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.5},
                distributions=DIST,
                values=values,
                user_attrs={"metrics": metrics},
            )
        )
    for k, v in (attrs or {}).items():
        study.set_user_attr(k, v)
    return study


def test_best_so_far_keeps_the_steps() -> None:
    study = _study(["minimize"], [[3.0], [1.0], [2.0], [0.5], [0.7]])
    fig = study_figures(study)["best"]
    (trace,) = fig["data"]
    assert trace["x"] == [0, 1, 3, 4] and trace["y"] == [3.0, 1.0, 0.5, 0.5]
    assert trace["line"]["shape"] == "hv" and "minimize" in trace["name"]
    assert "hypervolume" not in study_figures(study)  # one objective: no hypervolume


def test_hypervolume_over_trials_with_the_stored_reference() -> None:
    rows = [[0.5, 0.5], [0.9, 0.2], [0.4, 0.4], [0.2, 0.9]]
    study = _study(
        ["maximize"] * 2, rows, attrs={PARETO_ATTR: {"reference": [0.0, 0.0], "source": "base"}}
    )
    fig = study_figures(study)["hypervolume"]
    (trace,) = fig["data"]
    # 0.25; + (0.9−0.5)·0.2; trial 2 is dominated; + 0.2·(0.9−0.5).
    assert trace["x"] == [0, 1, 3]
    assert trace["y"] == pytest.approx([0.25, 0.33, 0.41])
    assert trace["y"][-1] == pytest.approx(hypervolume(rows, [0, 0], ["maximize"] * 2))
    assert "reference: base" in fig["layout"]["title"]["text"]
    # Without a stored reference: the worst scores, as study_hypervolume measures it.
    plain = _study(["maximize", "minimize"], [[0.5, 0.5], [0.9, 0.2], [0.4, 0.7]])
    (trace,) = study_figures(plain)["hypervolume"]["data"]
    assert trace["y"][-1] == pytest.approx(study_hypervolume(plain)[0])
    assert trace["y"][-1] == pytest.approx((0.9 - 0.4) * (0.7 - 0.2) + (0.5 - 0.4) * (0.2 - 0.2))


def test_best_trial_is_the_balanced_pick_on_the_front() -> None:
    study = _study(["maximize"] * 2, [[0.9, 0.1], [0.6, 0.6], [0.1, 0.9], [0.5, 0.5]])
    assert best_trial(study).number == 1
    single = _study(["maximize"], [[0.2], [0.8], [0.5]])
    assert best_trial(single).number == 1


def test_heatmap_columns_are_the_spaces_groups() -> None:
    space = build_space("layerwise", LAYOUT, {})
    params = {p.name: round(0.1 * (i + 1), 1) for i, p in enumerate(space.params)}
    columns, z = block_coefficients(space, LAYOUT, params)
    assert columns == ["embed", "layer0", "layer1", "final"]
    expected = [[params[f"lambda.{e}.{c}"] for c in columns] for e in ("a", "b")]
    np.testing.assert_allclose(z, expected, rtol=1e-12)


class _PerTensor(Space):
    """Coefficient 0.1·(t+1) for expert a, 1 − that for b: differs inside a block."""

    kind = "per_tensor_test"

    def __init__(self, layout: PoolLayout) -> None:
        super().__init__(layout)
        self.params = [Param("x", 0.0, 1.0, 0.5)]

    def to_plan(self, point):
        c = 0.1 * (np.arange(self.layout.num_tensors) + 1)
        return MergePlan(np.stack([c, 1 - c], axis=1))


def test_heatmap_blocks_average_by_tensor_size() -> None:
    columns, z = block_coefficients(_PerTensor(LAYOUT), LAYOUT, {"x": 0.5})
    assert columns == ["embed", "layer0", "layer1", "final"]
    layer0 = (4 * 0.2 + 12 * 0.3) / 16  # enc.0.q (4 entries) and enc.0.fc (12)
    assert z[0].tolist() == pytest.approx([0.1, layer0, 0.4, 0.5])
    assert z[1].tolist() == pytest.approx([0.9, 1 - layer0, 0.6, 0.5])


def test_coefficients_figure_shows_the_best_trials_plan() -> None:
    space = build_space("modelwise", LAYOUT, {})
    study = optuna.create_study(direction="maximize")
    for lam, v in (((0.2, 0.9), 0.4), ((0.7, 0.3), 0.8)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lambda.a": lam[0], "lambda.b": lam[1]},
                distributions={n: FloatDistribution(0.0, 1.0) for n in space.names()},
                values=[v],
            )
        )
    fig = study_figures(study, space=space, layout=LAYOUT)["coefficients"]
    (heat,) = fig["data"]
    assert heat["y"] == ["a", "b"] and heat["x"] == ["embed", "layer0", "layer1", "final"]
    assert heat["z"] == [[0.7] * 4, [0.3] * 4]
    assert "trial 1" in fig["layout"]["title"]["text"]


def test_task_scores_of_the_pareto_trials() -> None:
    study = _study(
        ["maximize"] * 2, [[0.9, 0.1], [0.5, 0.5], [0.4, 0.4], [0.1, 0.9]], names=["low", "parity"]
    )
    fig = study_figures(study)["tasks"]
    assert [t["name"] for t in fig["data"]] == ["low", "parity"]
    assert fig["data"][0]["x"] == ["#0", "#1", "#3"]
    assert fig["data"][0]["y"] == [0.9, 0.5, 0.1] and fig["data"][1]["y"] == [0.1, 0.5, 0.9]
    single = _study(["minimize"], [[0.3], [0.1], [0.2]], names=["loss"])
    assert study_figures(single)["tasks"]["data"][0]["x"] == ["#1", "#2", "#0"]  # best first


def test_front_figure_adds_maps_predicted_front() -> None:
    rows = [[0.9, 0.1], [0.5, 0.5], [0.4, 0.4]]
    plain = _study(["maximize"] * 2, rows, names=["low", "parity"])
    fig = study_figures(plain)["front"]
    assert [t["name"] for t in fig["data"]] == ["evaluated", "Pareto front (evaluated)"]
    assert fig["data"][1]["x"] == [0.5, 0.9] and fig["data"][1]["y"] == [0.5, 0.1]
    record = {
        "tasks": ["low", "parity"],
        "directions": ["maximize", "maximize"],
        "evaluations": 3,
        "front": [{"params": {}, "predicted": {"low": x, "parity": 1 - x}} for x in (0.8, 0.3)],
    }
    # MAP on a mean-aggregated study: the axes are the per-task metrics, not the values.
    mapped = _study(["maximize"], [[0.5]], names=["mean"], attrs={"map": record})
    assert "front" not in study_figures(mapped)  # its trial has no metric of task low
    with_metrics = _study(["maximize"] * 2, rows, names=["low", "parity"], attrs={"map": record})
    front = study_figures(with_metrics)["front"]
    pred = front["data"][2]
    assert pred["name"] == "MAP predicted front"
    assert pred["x"] == [0.3, 0.8] and pred["y"] == pytest.approx([0.7, 0.2])
    assert "from 3 evaluations" in front["layout"]["title"]["text"]
    assert "front" not in study_figures(_study(["maximize"], [[0.5]]))


def _stored(study) -> dict[str, dict]:
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: json.loads(v) for k, v in get_plotly_graph_objects(attrs).items()}


def test_publish_stores_what_the_dashboard_reads(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = _study(
        ["maximize"] * 2,
        [[0.9, 0.1], [0.5, 0.5]],
        storage=open_storage(url),
        names=["low", "parity"],
    )
    figures = study_figures(study)
    ids = publish_figures(study, figures)
    assert sorted(ids) == ["mergesweep-best", "mergesweep-hypervolume", "mergesweep-tasks"]
    stored = _stored(study)
    assert set(stored) == set(ids)  # "front" has no MAP prediction: the dashboard draws it
    for key in ("best", "hypervolume", "tasks"):
        assert stored[f"mergesweep-{key}"] == figures[key]
    figures["best"]["data"][0]["y"] = [0.9]  # a shorter version blanks the chunks left over
    figures["best"]["data"][0]["name"] = "x" * 5000
    publish_figures(study, {"best": figures["best"]})
    figures["best"]["data"][0]["name"] = "short"
    publish_figures(study, {"best": figures["best"]})
    assert _stored(study)["mergesweep-best"] == figures["best"]


def test_every_figure_is_valid_plotly() -> None:
    go = pytest.importorskip("plotly.graph_objects")
    space = build_space("layerwise", LAYOUT, {})
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["acc", "loss"])
    dists = {n: FloatDistribution(0.0, 1.0) for n in space.names()}
    for i in range(5):
        params = {n: (i + 1) / 7 for n in space.names()}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                values=[i / 5, (i - 2) ** 2],
                user_attrs={"metrics": {"acc": i / 5, "loss": (i - 2) ** 2}},
            )
        )
    figures = study_figures(study, space=space, layout=LAYOUT)
    assert set(figures) == {"front", "hypervolume", "best", "coefficients", "tasks"}
    for fig in figures.values():
        go.Figure(fig)  # raises on any property plotly does not know


def _setup(study):
    return SimpleNamespace(study=study, space=None, layout=None)


def test_refresher_cadence_and_cost_bound(tmp_path) -> None:
    study = _study(["maximize"], [[0.1]], storage=open_storage(f"sqlite:///{tmp_path / 'r.db'}"))
    ref = FigureRefresher(_setup(study), every=10, max_share=1e9, min_interval_s=0.0)
    for done, expected in ((1, 1), (5, 1), (10, 1), (11, 2), (12, 2), (21, 3)):
        ref.tick(done)
        assert ref.refreshes == expected, done
    ref.cost, ref.max_share = 10.0, 0.05  # a slow last refresh: wait 200 s before the next
    ref.tick(40)
    assert ref.refreshes == 3
    ref.cost, ref.min_interval_s = 0.0, 60.0  # a cheap one, but the last was under 60 s ago
    ref.tick(50)
    assert ref.refreshes == 3
    ref.last_end -= 61.0
    ref.tick(51)
    assert ref.refreshes == 4
    ref.close()  # the final refresh always runs
    assert ref.refreshes == 5 and "mergesweep-best" in _stored(study)


def test_a_failing_refresh_warns_once_and_turns_off(caplog) -> None:
    broken = SimpleNamespace(study=None, space=None, layout=None)  # study_figures fails on it
    ref = FigureRefresher(broken)
    with caplog.at_level(logging.WARNING, logger="mergesweep.dashboard"):
        ref.tick(1)
        ref.close()
    assert not ref.enabled and ref.refreshes == 0
    assert len([r for r in caplog.records if "refresh failed" in r.message]) == 1


def test_write_html_and_png(tmp_path) -> None:
    study = _study(["maximize"] * 2, [[0.9, 0.1], [0.5, 0.5]], names=["low", "parity"])
    figures = study_figures(study)
    page = write_figures(figures, tmp_path / "f.html", title="s").read_text()
    for key in figures:
        assert f'id="mergesweep-{key}"' in page
    assert "Pareto front: low vs parity" in page and "plotly" in page.lower()
    png = write_figures(figures, tmp_path / "f.png", title="s").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 1000 and height > 900  # 2 × 2 panels


def test_write_refuses_bad_paths(tmp_path) -> None:
    figures = study_figures(_study(["maximize"], [[0.5]]))
    with pytest.raises(ConfigError, match=r"--plot: '.*f\.svg' must end in \.html or \.png"):
        write_figures(figures, tmp_path / "f.svg", title="s")
    with pytest.raises(ConfigError, match=r"--plot: folder '.*nope' does not exist"):
        write_figures(figures, tmp_path / "nope" / "f.png", title="s")
    with pytest.raises(ConfigError, match="--plot: study 's' has no complete trial"):
        write_figures({}, tmp_path / "f.png", title="s")
