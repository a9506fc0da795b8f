"""One transaction for a trial's many small writes.

Optuna commits every ``set_trial_param`` and ``set_trial_user_attr`` on its own: asking a point
of a 20-parameter layer-wise space costs 20 SQLite transactions (~9 ms each with SQLAlchemy's
per-session work), more than the sampler itself. Inside :func:`batched_writes` those writes are
buffered and committed together when the block ends, in the order they were made; so is the
final state a ``tell`` in the block writes (its values and completion time), so a finished trial
costs one transaction: attrs, values and state. The params go in as one multi-row insert.

Why it is safe: a trial's own params are served to the sampler from Optuna's in-memory copy of
the trial (``Trial._cached_frozen_trial``), never read back from the storage during ``ask``;
other trials are untouched. A driver killed inside the block leaves a RUNNING trial without
params, which :func:`mergesweep.study.reconcile` fails (re-queueing an enqueued point from its
``fixed_params``). Storages other than Optuna's cached RDB storage are written through as usual.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["batched_writes", "coalesced_reads"]


def _rdb(storage: Any) -> Any | None:
    """The RDB backend behind Optuna's cache, or None when batching does not apply."""
    from optuna.storages._cached_storage import _CachedStorage

    if not isinstance(storage, _CachedStorage):
        return None
    backend = storage._backend
    needed = ("_set_trial_param_without_commit", "_set_trial_attr_without_commit", "scoped_session")
    if not isinstance(backend, optuna.storages.RDBStorage) or not all(
        hasattr(backend, n) for n in needed
    ):
        return None  # an Optuna whose internals moved: write through
    return backend


# System attrs are written through (samplers read them back within the ask: GridSampler), but
# for those only ever read from *other* trials: TPE's constant-liar copy of a trial's relative
# params (``tpe:relative_params:<chunk>``), which the sampler reads for running trials and
# filters the asking trial out of. Buffered, it costs one upsert in the batch, not 5 statements
# and a commit per ask.
_OTHERS_ONLY = ("tpe:relative_params:",)
# Buffered attr writes by kind -> the Optuna model (table) they go to.
_ATTR_MODELS = {"attr": "TrialUserAttributeModel", "system": "TrialSystemAttributeModel"}
_BUFFERED = (
    "set_trial_param",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_trial_state_values",
    "set_trial_intermediate_value",  # written through, dropping the block's copy of the trial
    "get_trial",
    "create_new_trial",
)


@contextlib.contextmanager
def batched_writes(study: optuna.Study) -> Iterator[None]:
    """Buffer the study's trial param and user-attr writes, and the final state a ``tell``
    writes; commit them in one transaction, in the order they were made, when the block ends.

    A ``tell`` inside the block returns before its state is stored (Optuna's returned copy
    still says RUNNING); the state is committed with the attrs written before it, so a
    complete trial is never stored without them.

    Reads of one unfinished trial are served once per block: Optuna reads the trial it just
    created (``Trial.__init__``) and reads a trial twice per ``tell``, each time from the
    database; within the block nothing the database holds of it changes but through the
    writes that go through here, which drop the copy. The commit still checks, under lock,
    that the trial is unfinished.

    Example:
        >>> with batched_writes(study):  # doctest: +SKIP
        ...     trial = study.ask(distributions)
        ...     trial.set_user_attr("plan", summary)
    """
    storage = study._storage
    backend = _rdb(storage)
    if backend is None or "set_trial_param" in vars(storage):  # unsupported, or nested
        yield
        return
    writes: list[tuple[Any, ...]] = []
    set_state = storage.set_trial_state_values

    # Unfinished trials as the database holds them now (Optuna's cache serves finished ones).
    seen: dict[int, FrozenTrial] = {}

    def state(trial_id: int, state: TrialState, values: Any = None) -> bool:  # Optuna's names
        if not state.is_finished():  # WAITING → RUNNING in ask: its answer is needed now
            seen.pop(trial_id, None)
            return set_state(trial_id, state, values)
        writes.append(("state", trial_id, state, values))
        return True

    storage.set_trial_param = lambda *args: writes.append(("param", *args))
    storage.set_trial_user_attr = lambda trial_id, key, value: writes.append(
        ("attr", trial_id, key, value)
    )
    set_system = storage.set_trial_system_attr

    def system(trial_id: int, key: str, value: Any) -> None:  # Optuna's parameter names
        if key.startswith(_OTHERS_ONLY):
            writes.append(("system", trial_id, key, value))
        else:
            seen.pop(trial_id, None)
            set_system(trial_id, key, value)

    get_trial, create = storage.get_trial, storage.create_new_trial
    set_step = storage.set_trial_intermediate_value

    def read(trial_id: int) -> FrozenTrial:
        if trial_id not in seen:
            trial = get_trial(trial_id)
            if trial.state.is_finished():
                return trial
            seen[trial_id] = trial
        return copy.deepcopy(seen[trial_id])

    def created(study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = create(study_id, template_trial)
        if template_trial is None:  # a fresh RUNNING trial, as Optuna's cache now holds it
            with contextlib.suppress(AttributeError, KeyError):  # else: read when asked
                _, number = storage._trial_id_to_study_id_and_number[trial_id]
                seen[trial_id] = copy.deepcopy(storage._studies[study_id].trials[number])
        return trial_id

    def step(trial_id: int, *args: Any, **kwargs: Any) -> None:  # written through
        seen.pop(trial_id, None)
        set_step(trial_id, *args, **kwargs)

    storage.set_trial_system_attr = system
    storage.set_trial_state_values = state
    storage.set_trial_intermediate_value = step
    storage.get_trial, storage.create_new_trial = read, created
    try:
        yield
    finally:
        for name in _BUFFERED:
            delattr(storage, name)
        if writes:
            _commit(storage, backend, writes)


def _commit(storage: Any, backend: Any, writes: list[tuple[Any, ...]]) -> None:
    from optuna.distributions import check_distribution_compatibility, distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with storage._lock, _create_scoped_session(backend.scoped_session, True) as session:
        checked: set[int] = set()  # trials found and updatable (one query each, not per write)
        upserts = {kind: _attr_upsert(backend.engine.name, kind) for kind in _ATTR_MODELS}
        params: list[dict[str, Any]] = []  # inserted together, in order, before any state
        for kind, trial_id, *rest in writes:
            if kind in upserts:
                key, value = rest
                upsert = upserts[kind]
                if upsert is None:
                    model = getattr(models, _ATTR_MODELS[kind])
                    backend._set_trial_attr_without_commit(session, model, trial_id, key, value)
                    continue
                _check_updatable(backend, session, trial_id, checked)
                upsert(session, trial_id, key, value)
                continue
            if kind == "state":
                _insert_params(session, params)
                _finish_trial(backend, session, trial_id, *rest)
                continue
            name, internal, dist = rest
            study_id, _ = storage._trial_id_to_study_id_and_number[trial_id]
            known = storage._studies[study_id].param_distribution
            if name not in known:  # first use of the name: Optuna's path checks the study
                _insert_params(session, params)
                backend._set_trial_param_without_commit(session, trial_id, name, internal, dist)
                session.flush()  # its param id precedes the ones inserted after it
                known[name] = dist
                continue
            _check_updatable(backend, session, trial_id, checked)
            check_distribution_compatibility(known[name], dist)
            params.append(
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": internal,
                    "distribution_json": distribution_to_json(dist),
                }
            )
        _insert_params(session, params)


def _insert_params(session: Any, params: list[dict[str, Any]]) -> None:
    """One multi-row insert of the buffered params (ids follow their order), then none left."""
    if params:
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        session.connection().execute(sa.insert(models.TrialParamModel.__table__), params)
        params.clear()


def _finish_trial(
    backend: Any, session: Any, trial_id: int, state: TrialState, values: Any
) -> None:
    """What :meth:`RDBStorage.set_trial_state_values` does for a finished state, in ``session``
    (prebuilt Core statements on SQLite and PostgreSQL, Optuna's ORM path elsewhere)."""
    from optuna.storages._rdb import models

    core = _core(backend.engine.name)
    if core is None:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        backend.check_trial_is_updatable(trial_id, trial.state)
        for objective, value in enumerate(values or ()):
            backend._set_trial_value_without_commit(session, trial, objective, value)
        trial.state = state
        trial.datetime_complete = datetime.now()
        return
    _check_state(backend, session, trial_id, core["state_for_update"])
    conn = session.connection()  # Core statements: the session's transaction, not its ORM
    for objective, value in enumerate(values or ()):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        conn.execute(
            core["value"], {"trial_id": trial_id, "objective": objective, "v": stored, "t": kind}
        )
    conn.execute(core["finish"], {"id": trial_id, "s": state, "done": datetime.now()})


def _check_state(backend: Any, session: Any, trial_id: int, query: Any) -> None:
    """Optuna's ``KeyError`` for a missing trial, its ``UpdateFinishedTrialError`` for a
    finished one."""
    row = session.connection().execute(query, {"id": trial_id}).first()
    if row is None:
        raise KeyError(f"No trial with trial_id {trial_id} exists.")
    backend.check_trial_is_updatable(trial_id, row[0])


@functools.cache
def _core(dialect: str) -> dict[str, Any] | None:
    """Prebuilt statements for a trial's state check and completion (SQLite and PostgreSQL,
    whose upserts match Optuna's unique keys); None elsewhere."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    insert = _upsert_insert(dialect)
    if insert is None:
        return None
    trials = models.TrialModel.__table__
    values = models.TrialValueModel.__table__
    state = sa.select(trials.c.state).where(trials.c.trial_id == sa.bindparam("id"))
    value = insert(values).values(
        trial_id=sa.bindparam("trial_id"),
        objective=sa.bindparam("objective"),
        value=sa.bindparam("v"),
        value_type=sa.bindparam("t"),
    )
    value = value.on_conflict_do_update(
        index_elements=[values.c.trial_id, values.c.objective],
        set_=dict(value=value.excluded.value, value_type=value.excluded.value_type),
    )
    finish = (
        sa.update(trials)
        .where(trials.c.trial_id == sa.bindparam("id"))
        .values(state=sa.bindparam("s"), datetime_complete=sa.bindparam("done"))
    )
    return {
        "state": state,
        "state_for_update": state.with_for_update(),
        "value": value,
        "finish": finish,
    }


def _check_updatable(backend: Any, session: Any, trial_id: int, checked: set[int]) -> None:
    """Optuna's check that the trial exists and is unfinished, once per trial and batch."""
    from optuna.storages._rdb import models

    if trial_id in checked:
        return
    core = _core(backend.engine.name)
    if core is None:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        backend.check_trial_is_updatable(trial_id, trial.state)
    else:
        _check_state(backend, session, trial_id, core["state"])
    checked.add(trial_id)


def _upsert_insert(dialect: str) -> Any | None:
    """The dialect's ``insert`` with ``on_conflict_do_update`` (SQLite ≥ 3.24, PostgreSQL)."""
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert

        return insert
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert
    return None


@functools.cache
def _attr_upsert(dialect: str, kind: str = "attr") -> Any | None:
    """A writer of the user- (or system-) attr upsert Optuna itself emits for SQLite and
    PostgreSQL, without its per-write trial lookup; None for other databases (Optuna's own
    path is used)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    insert = _upsert_insert(dialect)
    if insert is None:
        return None
    table = getattr(models, _ATTR_MODELS[kind]).__table__  # Core: no ORM bulk-insert path

    # Built once with bound parameters: SQLAlchemy reuses its compiled form for every write.
    stmt = insert(table).values(
        trial_id=sa.bindparam("trial_id"), key=sa.bindparam("key"), value_json=sa.bindparam("v")
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c.key],
        set_=dict(value_json=stmt.excluded.value_json),
    )

    def write(session: Any, trial_id: int, key: str, value: Any) -> None:
        # On the session's connection: the same transaction, without the ORM's statement
        # dispatch (a third of each write's cost).
        params = {"trial_id": trial_id, "key": key, "v": json.dumps(value)}
        session.connection().execute(stmt, params)

    return write


@contextlib.contextmanager
def coalesced_reads(study: optuna.Study) -> Iterator[None]:
    """Within the block, read the study's trials from the database at most once.

    ``study.ask`` refreshes Optuna's trial cache from the database three times (the waiting
    queue, then the sampler's search space and its trials: ~7 queries each). The first read
    already returns the in-flight trials with their params; the trial the block creates is put
    in the cache by Optuna itself, so later reads in the same ask would return the same
    snapshot. Storages other than Optuna's cached RDB storage read as usual.
    """
    storage = study._storage
    if _rdb(storage) is None or "_read_trials_from_remote_storage" in vars(storage):
        yield
        return
    read = storage._read_trials_from_remote_storage
    done: set[int] = set()

    def once(study_id: int) -> None:
        if study_id not in done:
            done.add(study_id)
            read(study_id)

    storage._read_trials_from_remote_storage = once
    try:
        yield
    finally:
        del storage._read_trials_from_remote_storage
