"""Fixtures for dashboard tests: a real two-task Pareto sweep, a served dashboard, Chromium.

``pareto_sweep`` runs the real driver on the digits zoo (two tasks, layer-wise space, random
search): its figures are the ones the driver published. ``chromium`` installs Debian's
``chromium`` and ``chromium-driver`` with apt-get when they are missing (root, or sudo without
a password) and skips, saying why, only when that fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from mergesweep.storage import open_storage

TASKS = ("low", "parity")


@dataclass
class Sweep:
    url: str
    name: str
    study: optuna.Study


def sweep_config(zoo: Path, folder: Path, name: str, trials: int) -> dict:
    """Two digits tasks as a Pareto study over a layer-wise space (2 experts × 5 blocks)."""
    return {
        "name": name,
        "seed": 0,
        "storage": f"sqlite:///{folder / 'studies.db'}",
        "pool": {
            "base": str(zoo / "base"),
            "experts": {t: str(zoo / "experts" / t) for t in TASKS},
            "include": [r"vit\..*"],
        },
        "space": {"kind": "layerwise"},
        "objectives": {
            "mode": "pareto",
            "tasks": {
                t: {"kind": "accuracy", "data": str(zoo / "data" / t), "samples": 100}
                for t in TASKS
            },
        },
        "searcher": {"name": "random", "enqueue": ["init"]},
        "budget": {"trials": trials},
        "executor": {"kind": "inline"},
    }


@pytest.fixture(scope="session")
def pareto_sweep(digits_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """A finished 8-trial sweep (real merges and evaluations) in its own SQLite file."""
    from mergesweep.api import run

    folder = tmp_path_factory.mktemp("dash-sweep")
    cfg = sweep_config(digits_zoo, folder, "pareto2", trials=8)
    summary = run(cfg)
    assert summary.complete == 8
    study = optuna.load_study(study_name="pareto2", storage=open_storage(cfg["storage"]))
    return Sweep(cfg["storage"], "pareto2", study)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def cli_dashboard(pareto_sweep: Sweep, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mergesweep dashboard --port 0`` on the sweep's storage, as a user starts it; its URL."""
    cmd = [sys.executable, "-m", "mergesweep.cli", "dashboard", "--storage", pareto_sweep.url]
    # stderr to a file, not a pipe nobody drains: a full pipe would block the server's writes
    # (e.g. a client's dropped connection logged by wsgiref) and its exit.
    log = tmp_path_factory.mktemp("dash-cli") / "stderr.log"
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # SIGABRT dumps every thread's stack
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*cmd, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            # As from a terminal: a test run started in the background by a non-interactive
            # shell has SIGINT ignored, and a child would inherit that and never stop on it.
            preexec_fn=_default_sigint,
        )
    line = proc.stdout.readline()  # "mergesweep dashboard: http://127.0.0.1:PORT/dashboard ..."
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"dashboard did not start: {line}{log.read_text()[-2000:]}")
    yield line.split()[2]
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # where it hangs, into the log
        proc.wait(timeout=10)
        pytest.fail(f"the dashboard did not exit within 30 s of SIGINT:\n{log.read_text()[-4000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()[-2000:]


def _apt_install(packages: list[str]) -> str | None:
    """Install Debian packages; None on success, else why not."""
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return "not root and no sudo"
        prefix = ["sudo", "-n"]
    if not shutil.which("apt-get"):
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        try:
            done = subprocess.run(
                prefix + cmd, env=env, capture_output=True, text=True, timeout=900
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(cmd)}: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            return f"{' '.join(cmd)} exited {done.returncode}: {' '.join(tail)}"
    return None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of Debian's ``chromium`` and ``chromedriver``, installed with apt when missing."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        why = _apt_install(["chromium", "chromium-driver"])
        if why is not None:
            pytest.skip(f"chromium: apt-get cannot install chromium and chromium-driver ({why})")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("chromium: installed, but chromium or chromedriver is not on PATH")
    return browser, driver
