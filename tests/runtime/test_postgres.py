"""Studies on PostgreSQL (127.0.0.1:5432, a fresh database per test): sweep, resume and show
end to end, and two drivers sharing one study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from rt_configs import with_callable

import mergesweep.api as api
from mergesweep.cli import main
from mergesweep.storage import open_storage

pytestmark = pytest.mark.postgres


def _study(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def test_sweep_resume_and_show_on_postgres(pg_url, make_config) -> None:
    cfg = make_config(storage=pg_url, name="pg", budget__trials=3, executor={"kind": "inline"})
    assert api.run(cfg).complete == 3
    # A driver dies with a trial RUNNING; resume fails it, re-queues its point and finishes.
    study = _study("pg", pg_url)
    orphan = study.ask(study.trials[0].distributions)
    summary = api.resume("pg", pg_url, ["budget.trials=5"])
    assert summary.complete == 5
    trials = _study("pg", pg_url).get_trials(deepcopy=False)
    dead = trials[orphan.number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"] == "driver died mid-trial"
    (retry,) = [t for t in trials if t.user_attrs.get("requeue_of") == orphan.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == orphan.params

    out = CliRunner().invoke(main, ["show", "pg", "--storage", pg_url, "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    assert rows[0]["number"] == max(complete, key=lambda t: t.values[0]).number


def test_two_drivers_share_one_study(pg_url, make_config, tmp_path: Path, runtime_dir) -> None:
    """Two ``mergesweep run`` processes, same config and study, started together.

    Each counts the storage's complete trials and stops asking at the budget, then finishes
    its own in-flight trial: the study ends with 8 or 9 complete trials (the other inline
    driver's one trial in flight), none lost (no FAIL, nothing left RUNNING or WAITING), and
    the study is set up once (one enqueued start point) even though both create it at once.
    """
    cfg = with_callable(
        make_config(storage=pg_url, name="shared", budget__trials=8, executor={"kind": "inline"}),
        "slow",  # 0.3 s per trial, so that the two drivers overlap
    )
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [str(Path(sys.executable).with_name("mergesweep")), "run", str(path), "--no-progress"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    trials = _study("shared", pg_url).get_trials(deepcopy=False)
    states = {t.state for t in trials}
    assert states == {TrialState.COMPLETE}, states
    assert len(trials) in (8, 9)
    assert len({t.user_attrs["driver"] for t in trials}) == 2  # both drivers did work
    assert sum(1 for t in trials if t.user_attrs.get("enqueued")) == 1
    assert len({t.number for t in trials}) == len(trials)
