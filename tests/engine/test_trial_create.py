"""Trials created with Core statements: the rows Optuna's ORM path creates, numbered alike."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from mergesweep import trial_create
from mergesweep.storage import open_storage
from mergesweep.trial_create import create_trial

DISTS = {"x": FloatDistribution(0.0, 1.0)}


def _same_as_optunas(url: str, monkeypatch) -> None:
    storage = open_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    other = optuna.create_study(study_name="o", storage=storage)
    backend = study._storage._backend
    assert backend is storage
    # Interleaved with another study's trials: numbers count this study's trials only.
    for k in range(6):
        if k % 2:
            frozen = create_trial(backend, study._study_id)
        else:
            frozen = optuna.storages.RDBStorage._create_new_trial(backend, study._study_id)
        optuna.storages.RDBStorage._create_new_trial(backend, other._study_id)
        stored = backend.get_trial(frozen._trial_id)
        assert stored.number == frozen.number == k
        assert stored.state == frozen.state == TrialState.RUNNING
        assert stored.datetime_start == frozen.datetime_start
        assert stored.params == stored.user_attrs == stored.system_attrs == {}
    # The study's own ask goes through it: a trial that takes params, values and attrs.
    calls: list[int] = []

    def counted(backend, study_id):
        calls.append(study_id)
        return create_trial(backend, study_id)

    monkeypatch.setattr(trial_create, "create_trial", counted)
    trial = study.ask(DISTS)
    assert calls == [study._study_id]
    trial.set_user_attr("k", 1)
    study.tell(trial, 0.5)
    fresh = optuna.load_study(study_name="s", storage=open_storage(url)).trials
    assert [t.number for t in fresh] == list(range(7))
    assert fresh[6].params == trial.params and fresh[6].user_attrs == {"k": 1}
    assert fresh[6].value == 0.5
    with pytest.raises(KeyError, match="No study with study_id 999"):
        create_trial(backend, 999)


def test_core_creation_matches_optunas_on_sqlite(tmp_path, monkeypatch) -> None:
    _same_as_optunas(f"sqlite:///{tmp_path}/c.db", monkeypatch)


@pytest.mark.postgres
def test_core_creation_matches_optunas_on_postgres(pg_url, monkeypatch) -> None:
    _same_as_optunas(pg_url, monkeypatch)


@pytest.mark.postgres
def test_two_drivers_creating_at_once_never_share_a_number(pg_url) -> None:
    optuna.create_study(study_name="s", storage=open_storage(pg_url))
    numbers: list[int] = []
    lock = threading.Lock()

    def driver() -> None:
        study = optuna.load_study(study_name="s", storage=open_storage(pg_url))
        for _ in range(15):
            frozen = create_trial(study._storage._backend, study._study_id)
            with lock:
                numbers.append(frozen.number)

    threads = [threading.Thread(target=driver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(45))


def test_a_template_trial_takes_optunas_path(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 0.25})
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=DISTS, value=1.0))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING, TrialState.COMPLETE]
    assert trials[1].params == {"x": 0.5} and trials[1].value == 1.0
    assert study.ask(DISTS).params == {"x": 0.25}  # the queued point, then a fresh trial
    assert study.ask(DISTS).number == 2
