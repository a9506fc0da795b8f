"""The CLI as a user runs it: real subprocesses for the crash case, CliRunner elsewhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from mergesweep.cli import main
from mergesweep.storage import open_storage


def _write(tmp_path, cfg: dict, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for cmd in ([], ["run"], ["resume"], ["show"], ["list"], ["fork"], ["zoo", "build"], ["demo"]):
        result = runner.invoke(main, [*cmd, "--help"])
        assert result.exit_code == 0, cmd
        assert "Usage:" in result.output


def test_user_errors_are_one_line_exit_2(tmp_path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "pool: {base: x, experts: {a: y}}\nobjectives: {tasks: {a: {kind: accuracy}}}\n"
        "space: {kind: layerwize}\n"
    )
    cases = [
        (["run", str(tmp_path / "missing.yaml")], "error: config: no such file"),
        (["run", str(bad)], "error: pool.base: no such file or folder 'x'"),
        (
            ["show", "nope", "--storage", f"sqlite:///{tmp_path}/s.db"],
            "study 'nope' does not exist",
        ),
        (
            ["list", "--storage", "postgresql://nobody@127.0.0.1:1/none"],
            "error: storage: cannot open",
        ),
        (["list", "--storage", f"sqlite:///{tmp_path}/no/such/dir.db"], "does not exist"),
        (["zoo", "build", "zooo"], "error: zoo: unknown zoo 'zooo'; choose one of"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.output)


def test_unknown_space_names_the_key(make_config, tmp_path) -> None:
    cfg = make_config(space__kind="layerwize")
    result = CliRunner().invoke(main, ["run", str(_write(tmp_path, cfg))])
    assert result.exit_code == 2
    assert "space.kind: unknown space 'layerwize'; choose one of" in result.output


def test_run_show_list(make_config, tmp_path) -> None:
    cfg = make_config(budget__trials=2)
    path = _write(tmp_path, cfg)
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(path), "budget.trials=3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "study 't'" in result.output and "3 complete" in result.output
    shown = runner.invoke(main, ["show", "t", "--storage", cfg["storage"], "--json"])
    rows = json.loads(shown.output)
    assert len(rows) == 3 and set(rows[0]["metrics"]) == {"low", "high", "parity", "loop"}
    assert rows[0]["values"][0] >= rows[-1]["values"][0]  # best first
    table = runner.invoke(main, ["show", "t", "--storage", cfg["storage"]]).output
    assert "parity" in table and f"{rows[0]['values'][0]:.4f}" in table
    listed = runner.invoke(main, ["list", "--storage", cfg["storage"]]).output
    assert "t" in listed and "maximize" in listed


def test_run_with_pruning_says_how_many_were_pruned(make_config, tmp_path) -> None:
    cfg = make_config(budget__trials=12, searcher__name="tpe")
    path = _write(tmp_path, cfg)
    args = ["pruning.pruner=halving", "pruning.rungs=[0.25]", "pruning.startup_trials=3"]
    result = CliRunner().invoke(main, ["run", str(path), *args, "pruning.window=4"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="t", storage=open_storage(cfg["storage"])).trials
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    assert pruned > 0 and pruned + complete == 12
    assert f"{complete} complete, {pruned} pruned and 0 failed this run" in result.output


def test_sigkill_then_resume_loses_and_duplicates_nothing(make_config, tmp_path) -> None:
    # Big enough that the kill lands mid-run: a fast machine ran 8 toy trials between two polls.
    budget = 60
    cfg = make_config(budget__trials=budget)
    path = _write(tmp_path, cfg)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mergesweep.cli", "run", str(path), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    storage = open_storage(cfg["storage"])
    deadline = time.time() + 180
    done_before = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            study = optuna.load_study(study_name="t", storage=storage)
        except KeyError:
            continue
        done_before = len(study.get_trials(states=(TrialState.COMPLETE,)))
        if done_before >= 3:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 3 <= done_before < budget, proc.stderr.read().decode()[-2000:]
    complete_before = {
        t.number: t.values
        for t in optuna.load_study(study_name="t", storage=storage).get_trials(
            states=(TrialState.COMPLETE,)
        )
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergesweep.cli",
            "resume",
            "t",
            "--storage",
            cfg["storage"],
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="t", storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == budget
    # Nothing complete was lost or changed.
    assert {t.number: t.values for t in complete if t.number in complete_before} == complete_before
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # Each point re-queued after the kill ran once.
    requeued = [t.user_attrs["requeue_of"] for t in study.trials if "requeue_of" in t.user_attrs]
    assert len(requeued) == len(set(requeued))
