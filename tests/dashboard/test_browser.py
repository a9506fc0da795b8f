"""The dashboard in a real browser: Debian's headless Chromium driven by selenium.

The page is the study page of a real sweep (digits zoo, two tasks, Pareto mode), served by
``mergesweep dashboard``. The test reads what plotly drew (each graph div's ``data`` and its
SVG points) and compares it with the storage: the Pareto front, the hypervolume, the best so
far, the best trial's coefficients and the per-task scores of the Pareto trials.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from optuna.trial import TrialState

from mergesweep.figures import best_trial
from mergesweep.pareto import nondominated, study_hypervolume

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,3200",
)
IDS = ("hypervolume", "best", "coefficients", "tasks")

# Everything plotly drew in a graph div: its traces, title and SVG point count.
READ = """
const el = document.getElementById(arguments[0]);
if (!el || !el.data || !el.data.length || !el.querySelector('.main-svg')) return null;
return JSON.stringify({
  traces: el.data.map(t => ({type: t.type, name: t.name, x: t.x, y: t.y, z: t.z,
                             hover: t.hovertemplate || ''})),
  title: (el.layout.title && el.layout.title.text) || '',
  points: el.querySelectorAll('.scatterlayer .point').length,
  bars: el.querySelectorAll('.barlayer .point').length,
  cells: el.querySelectorAll('.hm, .heatmaplayer image').length,
});
"""


@pytest.fixture
def browser(chromium, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromium[1]), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _read(driver, element_id: str, timeout: float = 120.0) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    raw = WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: d.execute_script(READ, element_id),
        message=f"plotly never drew #{element_id}",
    )
    return json.loads(raw)


def test_study_page_shows_the_front_and_mergesweep_figures(
    browser, cli_dashboard, pareto_sweep, tmp_path
) -> None:
    study = pareto_sweep.study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    values = np.array([t.values for t in complete])
    front = values[nondominated(values, ["maximize", "maximize"])]
    browser.get(f"{cli_dashboard}/studies/{study._study_id}")

    # The dashboard's own Pareto front: every trial plotted, the front as "Best Trial".
    pareto = _read(browser, "graph-pareto-front")
    best = [t for t in pareto["traces"] if "Best Trial" in t["hover"]]
    assert len(best) == 1
    drawn = sorted(zip(best[0]["x"], best[0]["y"]))
    np.testing.assert_allclose(drawn, sorted(map(tuple, front.tolist())), rtol=1e-12)
    plotted = sorted(p for t in pareto["traces"] for p in zip(t["x"] or [], t["y"] or []))
    np.testing.assert_allclose(plotted, sorted(map(tuple, values.tolist())), rtol=1e-12)
    assert pareto["points"] == len(complete)

    figs = {k: _read(browser, f"user-defined-plot:mergesweep-{k}") for k in IDS}

    (hv,) = figs["hypervolume"]["traces"]
    assert hv["y"][-1] == pytest.approx(study_hypervolume(study)[0], rel=1e-9)
    assert hv["x"][-1] == max(t.number for t in complete) and figs["hypervolume"]["points"] > 0

    lines = {t["name"]: t for t in figs["best"]["traces"]}
    assert set(lines) == {"low (maximize)", "parity (maximize)"}
    for i, task in enumerate(("low", "parity")):
        assert lines[f"{task} (maximize)"]["y"][-1] == pytest.approx(values[:, i].max())

    pick = best_trial(study)
    (heat,) = figs["coefficients"]["traces"]
    assert f"trial {pick.number}" in figs["coefficients"]["title"]
    assert heat["y"] == ["low", "parity"] and heat["x"][:2] == ["embed", "layer0"]
    expected = [[pick.params[f"lambda.{e}.{c}"] for c in heat["x"]] for e in heat["y"]]
    np.testing.assert_allclose(heat["z"], expected, atol=1e-4)
    assert figs["coefficients"]["cells"] > 0  # the heatmap image is in the SVG

    bars = {t["name"]: t for t in figs["tasks"]["traces"]}
    on_front = sorted(
        (t for t in complete if any(np.allclose(t.values, f) for f in front)),
        key=lambda t: t.number,
    )
    assert bars["low"]["x"] == [f"#{t.number}" for t in on_front]
    for task in ("low", "parity"):
        assert bars[task]["y"] == pytest.approx([t.user_attrs["metrics"][task] for t in on_front])
    assert figs["tasks"]["bars"] == 2 * len(on_front)

    shot = tmp_path / "study-page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
