"""Studies end to end on the digits zoo: budget, storage records, resume, fork, failures."""

from __future__ import annotations

import math
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

import mergesweep
from mergesweep.driver import SweepError, complete_count
from mergesweep.errors import ConfigError, ResumeMismatchError, StorageError
from mergesweep.storage import open_storage
from mergesweep.study import ATTR, open_study

TASKS = ("low", "high", "parity", "loop")


def _load(cfg: dict) -> optuna.Study:
    return optuna.load_study(study_name=cfg["name"], storage=open_storage(cfg["storage"]))


def test_sweep_reaches_budget_and_records_everything(make_config) -> None:
    cfg = make_config()
    summary = mergesweep.run(cfg)
    assert summary.complete == 4 and summary.failed == 0
    study = _load(cfg)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    # The enqueued start point is task arithmetic at λ = 0.3 and runs first.
    assert trials[0].params == {f"lambda.{t}": 0.3 for t in TASKS}
    for t in trials:
        metrics = t.user_attrs["metrics"]
        assert set(metrics) == set(TASKS)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert math.isclose(t.values[0], sum(metrics.values()) / 4, rel_tol=1e-9)
        assert {"merge_s", "eval_s", "overhead_s", "load_s"} <= set(t.user_attrs["timings"])
        assert set(t.user_attrs["plan"]) == set(TASKS)
    # λ = 0.3 merges are clearly better than chance on every task (0.2/0.2/0.5/0.5).
    m0 = trials[0].user_attrs["metrics"]
    assert m0["low"] > 0.3 and m0["high"] > 0.3 and m0["parity"] > 0.55
    record = study.user_attrs[ATTR]
    assert record["config"]["name"] == "t"
    assert record["directions"] == ["maximize"]
    assert len(record["pool_fingerprint"]) == 16 and record["space_dim"] == 4
    assert study.metric_names == ["mean"]


def test_same_run_twice_continues_without_duplicates(make_config) -> None:
    cfg = make_config(budget__trials=2)
    mergesweep.run(cfg)
    cfg["budget"]["trials"] = 3
    summary = mergesweep.run(cfg)
    assert summary.complete == 3
    assert complete_count(_load(cfg)) == 3


def test_resume_refuses_a_changed_config(make_config) -> None:
    cfg = make_config(budget__trials=1)
    mergesweep.run(cfg)
    with pytest.raises(ResumeMismatchError, match=r"config changed .*space\.kind.*mergesweep fork"):
        mergesweep.run(make_config(space__kind="layerwise"))
    with pytest.raises(ResumeMismatchError, match=r"seed"):
        mergesweep.resume("t", cfg["storage"], ["seed=4"])
    # The stored study is intact and still resumable with budget changes.
    assert mergesweep.resume("t", cfg["storage"], ["budget.trials=2"]).complete == 2


def test_a_study_stored_before_a_config_key_existed_resumes(make_config) -> None:
    """A key added to the config since the study was stored (``pruning.window``) counts as its
    default; a real change is still refused."""
    from mergesweep.study import ATTR

    cfg = make_config(budget__trials=1)
    mergesweep.run(cfg)
    study = _load(cfg)
    record = study.user_attrs[ATTR]
    del record["config"]["pruning"]["window"]  # as an older mergesweep stored it
    study.set_user_attr(ATTR, record)
    assert mergesweep.resume("t", cfg["storage"], ["budget.trials=2"]).complete == 2
    with pytest.raises(ResumeMismatchError, match=r"pruning\.window"):
        mergesweep.resume("t", cfg["storage"], ["pruning.window=5"])


def test_resume_refuses_changed_weights(make_config, digits_zoo, tmp_path) -> None:
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(digits_zoo, zoo)
    cfg = make_config(zoo=zoo, budget__trials=1)
    mergesweep.run(cfg)
    weights = zoo / "experts" / "parity" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # rewrite the last weights
    weights.write_bytes(bytes(data))
    with pytest.raises(ResumeMismatchError, match=r"pool\.base/pool\.experts: the weight files"):
        mergesweep.resume("t", cfg["storage"])


def test_resume_fails_and_requeues_running_trials(make_config) -> None:
    cfg = make_config(budget__trials=3, searcher__enqueue=[])
    setup = open_study(cfg)
    # A driver that died mid-trial leaves a RUNNING trial behind.
    from mergesweep.search import distributions

    orphan = setup.study.ask(distributions(setup.space))
    params = dict(orphan.params)
    summary = mergesweep.resume("t", cfg["storage"])
    assert summary.complete == 3
    study = _load(cfg)
    dead = study.trials[orphan.number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"] == "driver died mid-trial"
    requeued = [t for t in study.trials if t.user_attrs.get("requeue_of") == orphan.number]
    assert len(requeued) == 1 and requeued[0].params == params
    assert requeued[0].state == TrialState.COMPLETE
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


FLAKY = """
import math
calls = {"n": 0}

def score(model, task):
    calls["n"] += 1
    if calls["n"] % 3 == 0:
        raise RuntimeError("flaky objective")
    if calls["n"] % 3 == 1:
        return float("nan")
    return 0.5
"""


def test_failing_objectives_fail_trials_not_the_sweep(make_config, tmp_path, monkeypatch) -> None:
    (tmp_path / "flaky_obj.py").write_text(textwrap.dedent(FLAKY))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_config(budget__trials=2)
    cfg["objectives"]["tasks"] = {"low": {"kind": "callable", "function": "flaky_obj:score"}}
    summary = mergesweep.run(cfg)
    study = _load(cfg)
    # Calls: NaN, ok, raise, NaN, ok.
    assert summary.complete == 2 and summary.failed == 3
    reasons = [t.user_attrs["fail_reason"] for t in study.get_trials(states=(TrialState.FAIL,))]
    assert sum("nan" in r for r in reasons) == 2
    assert sum("flaky objective" in r for r in reasons) == 1
    # Too many failures stop the sweep with the reason, leaving complete trials intact.
    cfg2 = {**cfg, "name": "t2", "budget": {"trials": 5, "max_failures": 1}}
    with pytest.raises(SweepError, match=r"budget\.max_failures: 2 trials failed"):
        mergesweep.run(cfg2)
    assert not _load(cfg2).get_trials(states=(TrialState.RUNNING,))


def test_pareto_mode_gives_one_objective_per_task(make_config) -> None:
    cfg = make_config(budget__trials=5, objectives__mode="pareto")
    cfg["searcher"] = {"name": "nsga2"}
    mergesweep.run(cfg)
    study = _load(cfg)
    assert study.metric_names == list(TASKS)
    assert len(study.directions) == 4
    for t in study.best_trials:
        assert t.values == [t.user_attrs["metrics"][k] for k in TASKS]
    with pytest.raises(ConfigError, match=r"searcher\.name: 'cmaes' handles one objective"):
        mergesweep.run({**cfg, "name": "t3", "searcher": {"name": "cmaes"}})


def test_fork_keeps_the_evidence_and_runs_its_own_budget(make_config) -> None:
    cfg = make_config(budget__trials=3)
    mergesweep.run(cfg)
    summary = mergesweep.fork("t", "t-gp", cfg["storage"], ["searcher.name=tpe", "budget.trials=2"])
    assert summary.complete == 2
    forked = _load({**cfg, "name": "t-gp"})
    complete = forked.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 5
    assert sum("forked_from" in t.user_attrs for t in complete) == 3
    with pytest.raises(StorageError, match=r"study 't-gp' already exists"):
        mergesweep.fork("t", "t-gp", cfg["storage"])
    with pytest.raises(StorageError, match=r"study 'nope' does not exist .*studies there: t"):
        mergesweep.resume("nope", cfg["storage"])


def test_grid_caps_the_budget(make_config) -> None:
    cfg = make_config(budget__trials=50)
    cfg["pool"]["experts"] = {"low": cfg["pool"]["experts"]["low"]}
    cfg["objectives"]["tasks"] = {"low": cfg["objectives"]["tasks"]["low"]}
    cfg["searcher"] = {"name": "grid", "options": {"points": 3}}
    assert mergesweep.run(cfg).complete == 3
    values = sorted(t.params["lambda.low"] for t in _load(cfg).trials)
    assert values == [0.0, 0.5, 1.0]
