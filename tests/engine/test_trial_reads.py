"""The Core trial reader returns exactly what Optuna's ORM reader returns, with fewer queries."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from mergesweep.storage import open_storage
from mergesweep.trial_reads import FastReadStorage, read_trials


def _fill(storage: RDBStorage) -> optuna.Study:
    """A two-objective study with every trial state, infinite and NaN values, intermediate
    values, user and system attrs, and params of every distribution kind."""
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(
        study_name="s", storage=storage, directions=["maximize", "minimize"], sampler=sampler
    )
    for i in range(25):
        t = study.ask()
        x = t.suggest_float("x", 0.0, 1.0)
        t.suggest_int("n", 1, 9)
        t.suggest_categorical("c", ["a", None, 3])
        t.suggest_float("lr", 1e-3, 1.0, log=True)
        t.suggest_float("q", 0.0, 1.0, step=0.25)
        t.set_user_attr("plan", {"lambda": [0.1, 2.5], "name": "é"})
        storage.set_trial_system_attr(t._trial_id, "fixed_params", {"x": 0.5})
        storage.set_trial_intermediate_value(t._trial_id, 0, math.nan if i % 7 == 0 else x)
        storage.set_trial_intermediate_value(t._trial_id, 3, -math.inf)
        match i % 5:
            case 0:
                study.tell(t, [x, math.inf])
            case 1:
                study.tell(t, state=TrialState.FAIL)
            case 2:
                study.tell(t, state=TrialState.PRUNED)
            case 3:
                study.tell(t, [-math.inf, 2.0])
            case _:
                pass  # left RUNNING
    study.enqueue_trial({"x": 0.25}, user_attrs={"requeue_of": 3})  # WAITING
    return study


def _same(a: FrozenTrial, b: FrozenTrial) -> None:
    """Field by field (FrozenTrial's ``==`` fails on NaN intermediate values)."""
    for name in ("number", "state", "values", "datetime_start", "datetime_complete", "params"):
        assert getattr(a, name) == getattr(b, name), name
    assert a._trial_id == b._trial_id
    assert a.distributions == b.distributions
    assert a.user_attrs == b.user_attrs and a.system_attrs == b.system_attrs
    assert a.intermediate_values.keys() == b.intermediate_values.keys()
    for step, value in a.intermediate_values.items():
        other = b.intermediate_values[step]
        assert value == other or (math.isnan(value) and math.isnan(other))
        assert type(value) is type(other)
    assert type(a.state) is TrialState


def _compare(storage: RDBStorage) -> None:
    study = _fill(storage)
    ids = sorted(t._trial_id for t in study.get_trials(deepcopy=False))
    first = ids[0]
    selections = [
        (None, set(), -1),  # every trial
        (None, {first + 1, first + 4}, first + 10),  # Optuna's cache refresh: unfinished + new
        ((TrialState.RUNNING, TrialState.WAITING), set(), first + 5),
        ((TrialState.COMPLETE,), {first, first + 20}, first + 19),
        (None, set(), ids[-1]),  # nothing newer
    ]
    for states, included, newer in selections:
        theirs = RDBStorage._get_trials(storage, study._study_id, states, included, newer)
        ours = read_trials(
            storage,
            study._study_id,
            states=states,
            included_trial_ids=included,
            trial_id_greater_than=newer,
        )
        assert [t.number for t in ours] == [t.number for t in theirs]
        for a, b in zip(ours, theirs):
            _same(a, b)
    assert len(read_trials(storage, study._study_id)) == 26
    for trial_id in ids:
        _same(storage.get_trial(trial_id), RDBStorage.get_trial(storage, trial_id))
    with pytest.raises(KeyError):
        storage.get_trial(ids[-1] + 100)
    with pytest.raises(KeyError):
        read_trials(storage, study._study_id + 100)


def test_core_reader_matches_optunas_on_sqlite(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/r.db")
    assert isinstance(storage, FastReadStorage)
    _compare(storage)


@pytest.mark.postgres
def test_core_reader_matches_optunas_on_postgres(pg_url) -> None:
    _compare(open_storage(pg_url))


def test_a_refresh_reads_in_two_queries_and_the_study_sees_every_trial(tmp_path) -> None:
    """Optuna's cache refresh through the reader: the trials, then all their child rows in one
    union (no lazy loads), and a study on the storage sees the same trials as Optuna's."""
    url = f"sqlite:///{tmp_path}/r.db"
    study = _fill(open_storage(url))
    plain = optuna.load_study(study_name="s", storage=RDBStorage(url))
    selects = [0]

    def count(_conn, _cursor, statement: str, *_args) -> None:
        selects[0] += statement.lstrip().upper().startswith("SELECT")

    backend = study._storage._backend
    event.listen(backend.engine, "before_cursor_execute", count)
    trials = backend._get_trials(study._study_id, None, set(), -1)
    assert selects[0] == 2 and len(trials) == 26
    ours, theirs = study.get_trials(deepcopy=False), plain.get_trials(deepcopy=False)
    assert len(ours) == len(theirs) == 26
    for a, b in zip(ours, theirs):
        _same(a, b)
    # A trial that finishes after the cache was filled is seen finished on the next read.
    running = next(t for t in ours if t.state == TrialState.RUNNING)
    plain.tell(running.number, [0.5, 0.5])
    assert study.get_trials(deepcopy=False)[running.number].values == [0.5, 0.5]
