"""Dashboard responsiveness on a large study: 2,000 trials × 40 parameters (issue: Dashboard).

Builds a synthetic two-objective study with optuna directly in SQLite (layer-wise space over a
made-up 18-layer pool: 2 experts × 20 blocks = 40 parameters; per-task metrics, timings and
plan summaries as the driver writes them), publishes mergesweep's figures on it (timing that:
it is what the driver pays per refresh at this size), serves it with ``mergesweep dashboard``
(a subprocess) and measures:

* the API: ``/api/studies`` and ``/api/studies/<id>`` response time and size, cold (first
  request after the server started) and warm (the dashboard caches trials 10 s at this size),
  and the page's 10 s poll (``?after=<trials>``) once that cache has expired;
* the study page in headless Chromium (selenium): from navigation start to the Pareto front
  drawn, and to every mergesweep figure drawn (time to first render), on a fresh server
  (cold) and on the same server again (warm).

    python benchmarks/dashboard_load.py [--trials 2000] [--loads 3] [--db PATH]

Writes benchmarks/results/dashboard_load.json. Needs the dev extra and Debian's chromium and
chromium-driver (apt-get install -y chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution

from mergesweep.dashboard import publish_figures
from mergesweep.figures import study_figures
from mergesweep.pool import PoolLayout
from mergesweep.spaces import build_space
from mergesweep.storage import open_storage

HERE = Path(__file__).resolve().parent
IDS = ("hypervolume", "best", "coefficients", "tasks")
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
# Milliseconds since navigation start at which each plot was first seen drawn (or null).
PROBE = """
const drawn = id => { const el = document.getElementById(id);
  return !!(el && el.data && el.data.length && el.querySelector('.main-svg')); };
const ids = arguments[0];
const now = performance.now();
window.__ms = window.__ms || {};
for (const id of ids) if (!(id in window.__ms) && drawn(id)) window.__ms[id] = now;
return JSON.stringify(window.__ms);
"""


def layout_40() -> PoolLayout:
    """A made-up pool: embed, 18 layers of 2 tensors, final — 20 blocks."""
    names = ["emb.w"] + [f"enc.{i}.{p}" for i in range(18) for p in ("q", "fc")] + ["norm.w"]
    shapes = [(64, 16)] + [(16, 16), (16, 64)] * 18 + [(16,)]
    return PoolLayout(
        experts=("low", "parity"),
        names=tuple(names),
        shapes=tuple(map(tuple, shapes)),
        fingerprint="synthetic",
    )


def build_study(url: str, trials: int, seed: int = 0):
    """The synthetic study: values are smooth functions of the 40 coefficients plus noise."""
    space = build_space("layerwise", layout_40(), {})
    dists = {n: FloatDistribution(0.0, 1.0) for n in space.names()}
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="big", directions=["maximize"] * 2)
    study.set_metric_names(["low", "parity"])
    study.set_user_attr(
        "mergesweep", {"config": {"objectives": {"tasks": {"low": {}, "parity": {}}}}}
    )
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(trials):
        x = rng.random(space.dim)
        a, b = x[:20].mean(), x[20:].mean()
        low = float(np.clip(0.9 * a - 0.3 * b + 0.3 + 0.03 * rng.standard_normal(), 0, 1))
        parity = float(np.clip(0.8 * b - 0.2 * a + 0.35 + 0.03 * rng.standard_normal(), 0, 1))
        params = dict(zip(space.names(), x.tolist()))
        plan = space.to_plan(params).summary(space.layout.experts)
        made.append(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                values=[low, parity],
                user_attrs={
                    "metrics": {"low": low, "parity": parity},
                    "plan": plan,
                    "timings": {"merge_s": 0.002, "eval_s": 0.4, "overhead_s": 0.07},
                },
            )
        )
    t0 = time.perf_counter()
    study.add_trials(made)
    write_s = time.perf_counter() - t0
    return study, space, write_s


def reuse_or_build(url: str, trials: int):
    """The study in ``url`` when it already holds ``trials`` trials (``--db`` reruns), else a
    new one (~9 minutes for 2,000 trials on a busy 2-core machine: optuna writes each trial's
    40 parameters row by row)."""
    storage = open_storage(url)
    if "big" in [s.study_name for s in storage.get_all_studies()]:
        study = optuna.load_study(study_name="big", storage=storage)
        if len(study.trials) == trials:
            return study, build_space("layerwise", layout_40(), {}), None
        raise SystemExit(f"{url} holds a study 'big' of another size: remove the file")
    return build_study(url, trials)


def get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as resp:
        body = resp.read()
        assert resp.status == 200
    return time.perf_counter() - t0, len(body)


def start_server(url: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mergesweep.cli", "dashboard", "--storage", url, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        raise SystemExit(f"dashboard did not start: {line}{proc.stderr.read()}")
    return proc, line.split()[2]


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def page_load(driver, page: str, timeout: float = 300.0) -> dict:
    """Navigate and poll (every 20 ms) until the Pareto front and all figures are drawn."""
    ids = ["graph-pareto-front", *(f"user-defined-plot:mergesweep-{k}" for k in IDS)]
    driver.get("about:blank")
    driver.get(page)  # returns at the load event
    t0 = time.perf_counter()
    seen: dict = {}
    while time.perf_counter() - t0 < timeout:
        seen = json.loads(driver.execute_script(PROBE, ids))
        if len(seen) == len(ids):
            break
        time.sleep(0.02)
    nav = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [n.domContentLoadedEventEnd, n.loadEventEnd];"
    )
    # The study-detail API call that gates every plot: when it was sent and answered.
    api = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(r => /\\/api\\/studies\\/\\d+(\\?after=0)?$/.test(r.name))"
        ".map(r => [r.name, r.startTime, r.responseStart, r.responseEnd, r.transferSize]);"
    )
    return {
        "dom_content_loaded_ms": round(nav[0]),
        "load_event_ms": round(nav[1]),
        "pareto_front_ms": round(seen.get(ids[0], float("nan"))),
        "all_figures_ms": round(max(seen.values())) if len(seen) == len(ids) else None,
        "per_figure_ms": {k.split(":")[-1]: round(v) for k, v in seen.items()},
        "detail_api_ms": [
            {"sent": round(a[1]), "first_byte": round(a[2]), "done": round(a[3]), "bytes": a[4]}
            for a in api
        ],
    }


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="dash-bench-profile-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(300)
    return driver, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--loads", type=int, default=3, help="warm page loads")
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="dash-bench-")
    url = f"sqlite:///{args.db or os.path.join(tmp, 'big.db')}"
    study, space, write_s = reuse_or_build(url, args.trials)
    t0 = time.perf_counter()
    figures = study_figures(study, space=space, layout=space.layout)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    publish_figures(study, figures)
    publish_s = time.perf_counter() - t0
    fig_bytes = {k: len(json.dumps(v)) for k, v in figures.items()}

    proc, base = start_server(url)
    api = base.removesuffix("/dashboard") + "/api"
    detail = f"{api}/studies/{study._study_id}"
    cold_list, _ = get(f"{api}/studies")
    cold_detail, size = get(detail)
    warm = [get(detail)[0] for _ in range(5)]
    time.sleep(11)  # past the dashboard's 10 s trial cache: what each 10 s page poll costs
    poll, poll_size = get(f"{detail}?after={args.trials}")
    driver, profile = browser()
    page = f"{base}/studies/{study._study_id}"
    try:
        stop(proc)  # a fresh server for the cold page load: nothing cached
        proc, base = start_server(url)
        page = f"{base}/studies/{study._study_id}"
        cold_page = page_load(driver, page)
        warm_pages = [page_load(driver, page) for _ in range(args.loads)]
    finally:
        driver.quit()
        stop(proc)
        shutil.rmtree(profile, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(p[key] for p in warm_pages)

    result = {
        "benchmark": "dashboard_load",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": round(os.getloadavg()[0], 1),
        },
        "command": f"python benchmarks/dashboard_load.py --trials {args.trials} "
        f"--loads {args.loads}",
        "study": {
            "trials": args.trials,
            "params": space.dim,
            "objectives": 2,
            "storage": "SQLite (WAL)",
            "add_trials_s": write_s and round(write_s, 1),
        },
        "figures": {
            "build_s": round(build_s, 3),
            "publish_s": round(publish_s, 3),
            "json_bytes": fig_bytes,
        },
        "api": {
            "studies_cold_s": round(cold_list, 3),
            "study_detail_cold_s": round(cold_detail, 3),
            "study_detail_warm_median_s": round(statistics.median(warm), 3),
            "study_detail_bytes": size,
            "poll_after_cache_expiry_s": round(poll, 3),
            "poll_bytes": poll_size,
        },
        "page": {
            "cold": cold_page,
            "warm": warm_pages,
            "warm_median_pareto_front_ms": med("pareto_front_ms"),
            "warm_median_all_figures_ms": med("all_figures_ms"),
        },
    }
    out = HERE / "results" / "dashboard_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
