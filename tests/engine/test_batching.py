"""Batched trial writes: same records as Optuna's write-through, in one transaction."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy import event

from mergesweep.batching import batched_writes, coalesced_reads
from mergesweep.storage import open_storage
from mergesweep.study import reconcile

DISTS = {f"lambda.{i:02d}": FloatDistribution(0.0, 1.0) for i in range(20)}


def _study(tmp_path, name: str = "s") -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path}/b.db"
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=3, multivariate=True)
    study = optuna.create_study(study_name=name, storage=open_storage(url), sampler=sampler)
    return study, url


def _commits(study: optuna.Study) -> list[int]:
    counter = [0]
    engine = study._storage._backend.engine
    event.listen(engine, "commit", lambda _conn: counter.__setitem__(0, counter[0] + 1))
    return counter


def _trial_selects(study: optuna.Study) -> list[int]:
    counter = [0]

    def count(_conn, _cursor, statement: str, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM trials" in statement:
            counter[0] += 1

    event.listen(study._storage._backend.engine, "before_cursor_execute", count)
    return counter


def _ask_and_tell(study: optuna.Study, batched: bool, n: int) -> None:
    for k in range(n):
        if batched:
            with batched_writes(study), coalesced_reads(study):
                trial = study.ask(DISTS)
                trial.set_user_attr("plan", {"k": k})
                trial.set_user_attr("plan", {"k": k, "again": True})  # the upsert overwrites
        else:
            trial = study.ask(DISTS)
            trial.set_user_attr("plan", {"k": k})
        study.tell(trial, sum(trial.params.values()))


def test_batched_ask_stores_what_write_through_stores(tmp_path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain, _ = _study(tmp_path / "a")
    batched, url = _study(tmp_path / "b")
    plain_commits, batched_commits = _commits(plain), _commits(batched)
    _ask_and_tell(plain, batched=False, n=6)
    _ask_and_tell(batched, batched=True, n=6)
    # Same sampler, same seed: the same points, whether the writes were batched or not.
    fresh = optuna.load_study(study_name="s", storage=open_storage(url))
    a = plain.get_trials(states=(TrialState.COMPLETE,))
    b = fresh.get_trials(states=(TrialState.COMPLETE,))
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.user_attrs for t in b] == [{"plan": {"k": k, "again": True}} for k in range(6)]
    assert all(len(t.params) == 20 for t in b)
    # Per trial, 20 params + 1 attr committed one by one, against one batch (reads commit too,
    # the same number of times in both studies).
    assert plain_commits[0] - batched_commits[0] >= 6 * 20, (plain_commits, batched_commits)


def test_coalesced_reads_read_the_trials_once_per_ask_and_see_other_drivers(tmp_path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain, _ = _study(tmp_path / "a")
    batched, url = _study(tmp_path / "b")
    _ask_and_tell(plain, batched=False, n=5)
    _ask_and_tell(batched, batched=True, n=5)
    plain_reads, batched_reads = _trial_selects(plain), _trial_selects(batched)
    with batched_writes(plain):
        a = plain.ask(DISTS)
    with batched_writes(batched), coalesced_reads(batched):
        b = batched.ask(DISTS)
    assert a.params == b.params  # the same sampler state: the same point
    assert 0 < batched_reads[0] < plain_reads[0], (batched_reads, plain_reads)
    # Another driver's in-flight trial (a second storage on the same file) is read at the
    # next ask, so parallel suggestions see it.
    other = optuna.load_study(study_name="s", storage=open_storage(url))
    theirs = other.ask(DISTS)
    with batched_writes(batched), coalesced_reads(batched):
        mine = batched.ask(DISTS)
    running = batched.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert {t.number for t in running} == {b.number, theirs.number, mine.number}
    # Outside the block, reads go through the storage as usual.
    assert "_read_trials_from_remote_storage" not in vars(batched._storage)


def test_batched_attr_on_a_finished_trial_is_refused(tmp_path) -> None:
    study, url = _study(tmp_path)
    trial = study.ask(DISTS)
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError), batched_writes(study):
        study._storage.set_trial_user_attr(trial._trial_id, "late", 1)
    assert optuna.load_study(study_name="s", storage=open_storage(url)).trials[0].user_attrs == {}


def test_writes_made_before_an_error_are_still_committed(tmp_path) -> None:
    study, url = _study(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), batched_writes(study):
        trial = study.ask(DISTS)
        trial.set_user_attr("driver", "d1")
        raise RuntimeError("boom")
    stored = optuna.load_study(study_name="s", storage=open_storage(url)).trials[0]
    assert stored.state == TrialState.RUNNING
    assert stored.params == trial.params and stored.user_attrs == {"driver": "d1"}
    # Outside the block, writes go straight through again.
    trial.set_user_attr("after", 1)
    again = optuna.load_study(study_name="s", storage=open_storage(url)).trials[0]
    assert again.user_attrs["after"] == 1


def test_reconcile_requeues_an_enqueued_point_killed_before_its_params(tmp_path) -> None:
    study, url = _study(tmp_path)
    point = {name: 0.25 for name in DISTS}
    study.enqueue_trial(point)
    # A driver killed inside ask's batch: the trial is RUNNING, its params never committed.
    trial_id = study._pop_waiting_trial_id()
    assert trial_id is not None
    loaded = optuna.load_study(study_name="s", storage=open_storage(url))
    assert loaded.trials[0].params == {}
    assert reconcile(loaded) == [0]
    trials = loaded.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert trials[1].state == TrialState.WAITING
    assert trials[1].system_attrs["fixed_params"] == point
    assert trials[1].user_attrs["requeue_of"] == 0


def test_a_tell_in_the_block_commits_attrs_values_and_state_together(tmp_path) -> None:
    study, url = _study(tmp_path)
    with batched_writes(study), coalesced_reads(study):
        first = study.ask(DISTS)  # the first ask takes Optuna's path for new param names
    study.tell(first, 0.5)
    commits = _commits(study)
    with batched_writes(study), coalesced_reads(study):
        trial = study.ask(DISTS)
    asked = commits[0]
    with batched_writes(study):
        trial.set_user_attr("metrics", {"a": 0.75})
        study.tell(trial, 0.75)
        # Not stored yet: another reader still sees the trial running, without its attrs.
        peek = optuna.load_study(study_name="s", storage=open_storage(url)).trials[1]
        assert peek.state == TrialState.RUNNING and peek.user_attrs == {}
    assert commits[0] - asked == 1  # one transaction (reads roll back: no commit)
    stored = optuna.load_study(study_name="s", storage=open_storage(url)).trials
    assert stored[1].state == TrialState.COMPLETE and stored[1].values == [0.75]
    assert stored[1].user_attrs == {"metrics": {"a": 0.75}}
    assert stored[1].datetime_complete >= stored[1].datetime_start
    # The params went in as one insert, in the order they were asked (Optuna sorts by id).
    assert list(stored[1].params) == list(trial.params) == list(stored[0].params)
    assert stored[1].params == trial.params
    # A pruned trial's state and a failed one's are batched the same way.
    for state in (TrialState.PRUNED, TrialState.FAIL):
        with batched_writes(study), coalesced_reads(study):
            t = study.ask(DISTS)
        with batched_writes(study):
            study.tell(t, state=state)
    states = [t.state for t in optuna.load_study(study_name="s", storage=open_storage(url)).trials]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.FAIL]
    # Telling a finished trial again is refused, and nothing is written.
    with pytest.raises(RuntimeError), batched_writes(study):
        study._storage.set_trial_user_attr(trial._trial_id, "late", 1)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    again = optuna.load_study(study_name="s", storage=open_storage(url)).trials[1]
    assert again.state == TrialState.COMPLETE and "late" not in again.user_attrs


def _asks_with_trials_in_flight(study: optuna.Study, batched: bool) -> list[optuna.Trial]:
    """4 told trials, then 3 asked and left running: TPE's constant liar sees the first two
    in-flight trials' relative params (a system attr) when it samples the third."""
    _ask_and_tell(study, batched=batched, n=4)
    asked = []
    for _ in range(3):
        if batched:
            with batched_writes(study), coalesced_reads(study):
                asked.append(study.ask(DISTS))
        else:
            asked.append(study.ask(DISTS))
    return asked


def test_tpe_relative_params_attr_is_batched_and_seen_by_the_next_ask(tmp_path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain, _ = _study(tmp_path / "a")
    batched, url = _study(tmp_path / "b")
    assert plain.sampler._constant_liar  # Optuna 5's default: in-flight trials count
    a = _asks_with_trials_in_flight(plain, batched=False)
    commits = _commits(batched)
    b = _asks_with_trials_in_flight(batched, batched=True)
    assert [t.params for t in a] == [t.params for t in b]
    stored = optuna.load_study(study_name="s", storage=open_storage(url)).trials[4:]
    key = "tpe:relative_params:0"
    assert [t.system_attrs[key] for t in stored] == [t.system_attrs[key] for t in plain.trials[4:]]
    assert json.loads(stored[0].system_attrs[key]) == pytest.approx(b[0].params)
    # A batched ask commits twice: the trials' one read and the batch (params and the attr;
    # written through, the attr was a third).
    asked = commits[0]
    with batched_writes(batched), coalesced_reads(batched):
        batched.ask(DISTS)
    assert commits[0] - asked == 2


def test_system_attrs_a_sampler_reads_back_are_written_through(tmp_path) -> None:
    study, url = _study(tmp_path)
    trial = study.ask(DISTS)
    with batched_writes(study):
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", 3)
        # Readable at once, by this storage and any other.
        assert study._storage.get_trial(trial._trial_id).system_attrs["grid_id"] == 3
        other = optuna.load_study(study_name="s", storage=open_storage(url))
        assert other.trials[0].system_attrs["grid_id"] == 3


def test_a_trial_is_read_from_the_database_once_per_block(tmp_path, monkeypatch) -> None:
    study, url = _study(tmp_path)
    backend = study._storage._backend
    reads: list[int] = []
    read = type(backend).get_trial
    monkeypatch.setattr(type(backend), "get_trial", lambda s, i: reads.append(i) or read(s, i))
    with batched_writes(study), coalesced_reads(study):
        trial = study.ask(DISTS)  # created here: Trial() reads the block's copy
    assert reads == []
    with batched_writes(study):
        trial.report(0.25, step=0)  # written through: the next read sees it
        assert study._storage.get_trial(trial._trial_id).intermediate_values == {0: 0.25}
        copy = study._storage.get_trial(trial._trial_id)
        copy.user_attrs["mutated"] = True  # a caller's change stays out of the block's copy
        told = study.tell(trial, 0.5)  # tell's two reads: served by the block's copy
        assert told.state == TrialState.RUNNING and "mutated" not in told.user_attrs
    assert reads == [trial._trial_id]  # once after the write-through, then the copy
    stored = optuna.load_study(study_name="s", storage=open_storage(url)).trials[0]
    assert stored.state == TrialState.COMPLETE and stored.intermediate_values == {0: 0.25}
