"""AdaMerging on the digits zoo: entropy descent, clamping, records, exact resume."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import mergesweep.api as api
from mergesweep.config import parse_config
from mergesweep.errors import ConfigError
from mergesweep.pool import PoolLayout
from mergesweep.runtime.worker import Evaluator
from mergesweep.search import adamerging as ada
from mergesweep.search import build_searcher
from mergesweep.search.adamerging import ATTR, adamerging_steps, coefficient_index
from mergesweep.spaces import build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
TASKS = ("low", "high", "parity", "loop")


def config(zoo, tmp_path, *, space=None, options=None, method=None, name="ada") -> dict:
    """A small AdaMerging study: 64 validation inputs per task (labels only for accuracy)."""
    return {
        "name": name,
        "seed": 0,
        "storage": f"sqlite:///{tmp_path / 'ada.db'}",
        "pool": {
            "base": str(zoo / "base"),
            "experts": {t: str(zoo / "experts" / t) for t in TASKS},
            "include": [r"vit\..*"],
        },
        "method": method or {"name": "task_arithmetic"},
        "space": space or {"kind": "modelwise"},
        "objectives": {
            "tasks": {
                t: {"kind": "accuracy", "data": str(zoo / "data" / t), "samples": 64} for t in TASKS
            }
        },
        "searcher": {
            "name": "adamerging",
            "options": {"steps": 6, "record_every": 2, "lr": 0.02, **(options or {})},
        },
        "budget": {"trials": 1},
        "executor": {"kind": "inline"},
    }


@pytest.fixture(scope="module")
def evaluator(digits_zoo, tmp_path_factory):
    """One resident pool (what a worker holds) for the worker-level tests."""
    cfg = config(digits_zoo, tmp_path_factory.mktemp("ev"), space={"kind": "layerwise"})
    return Evaluator(parse_config(cfg).to_dict())


def request(evaluator, *, raw, clamp, low=0.0, high=1.0, lr=0.02, n=3, step=0, adam=None):
    space = build_space("layerwise", evaluator.pool.layout, {"low": low, "high": high})
    return {
        "index": coefficient_index(space).tolist(),
        "low": [low] * space.dim,
        "high": [high] * space.dim,
        "raw": raw if isinstance(raw, list) else [raw] * space.dim,
        "adam": adam,
        "step": step,
        "n": n,
        "lr": lr,
        "clamp": clamp,
        "batches_per_task": 2,
        "batch_size": 16,
        "seed": 0,
    }


def test_entropy_gradient_steps_decrease_the_entropy(evaluator):
    first = adamerging_steps(evaluator, request(evaluator, raw=0.3, clamp=True, n=0))
    out = adamerging_steps(evaluator, request(evaluator, raw=0.3, clamp=True, n=4))
    later = adamerging_steps(
        evaluator,
        request(evaluator, raw=out["raw"], adam=out["adam"], step=4, clamp=True, n=4),
    )
    h0, h1, h2 = (sum(r["entropy"].values()) for r in (first, out, later))
    assert h2 < h1 < h0  # on the objectives' fixed subsets, not the training minibatches
    assert h0 - h2 > 0.02
    assert later["adam"]["step"] == 8.0
    moved = np.abs(np.array(later["raw"]) - 0.3)
    assert moved.max() > 0.05  # 8 Adam steps of lr 0.02 move λ by up to 0.16


def test_clamp_in_the_forward_pass_or_projection(evaluator):
    # λ starts at the upper bound 0.35; lower entropy pulls most λ up, past the bound.
    req = request(evaluator, raw=0.35, high=0.35, clamp=True, lr=0.05, n=3)
    clamped = adamerging_steps(evaluator, req)
    raw, eff = np.array(clamped["raw"]), np.array(clamped["coefficients"])
    assert raw.max() > 0.36  # the raw λ left the bounds …
    assert eff.max() <= 0.35 + 1e-7 and eff.min() >= 0.0  # … the merge never did
    np.testing.assert_allclose(eff, np.clip(raw, 0.0, 0.35), atol=1e-7)
    # Beyond the bound the clamp passes no gradient: λ = 0.5 > 0.35 everywhere stays put.
    beyond = adamerging_steps(evaluator, {**req, "raw": [0.5] * len(req["raw"]), "n": 1})
    assert beyond["raw"] == [0.5] * len(req["raw"])
    assert not any(beyond["adam"]["exp_avg"])
    projected = adamerging_steps(evaluator, {**req, "clamp": False})
    raw = np.array(projected["raw"])
    assert raw.max() <= 0.35 + 1e-7  # projected back onto the bounds after each step
    np.testing.assert_allclose(raw, projected["coefficients"], atol=0)


def test_run_is_recorded_as_trials_with_the_final_one_best(digits_zoo, tmp_path):
    cfg = config(digits_zoo, tmp_path)
    summary = api.run(cfg)
    assert summary.complete == 1
    st = optuna.load_study(study_name="ada", storage=cfg["storage"])
    trials = sorted(st.trials, key=lambda t: t.user_attrs[ATTR]["step"])
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2 + [TrialState.COMPLETE]
    assert [t.user_attrs[ATTR]["step"] for t in trials] == [2, 4, 6]
    assert st.best_trial.number == trials[-1].number
    final = trials[-1]
    assert set(final.user_attrs["metrics"]) == set(TASKS)  # accuracy: labels exist
    assert final.value == pytest.approx(np.mean(list(final.user_attrs["metrics"].values())))
    entropies = [sum(t.user_attrs["entropy"].values()) for t in trials]
    assert entropies == sorted(entropies, reverse=True)
    assert all(t.intermediate_values for t in trials)
    # Done: running it again records nothing more.
    assert api.run(cfg).complete == 1
    assert len(optuna.load_study(study_name="ada", storage=cfg["storage"]).trials) == 3


def test_resume_continues_from_the_last_record_exactly(digits_zoo, tmp_path, monkeypatch):
    whole = config(digits_zoo, tmp_path, name="whole", method={"name": "ties"})
    api.run(whole)
    cut = config(digits_zoo, tmp_path, name="cut", method={"name": "ties"})  # AdaMerging++
    calls = []
    real = ada.adamerging_steps

    def dies_on_the_second_call(evaluator, req):
        calls.append(req["step"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(evaluator, req)

    monkeypatch.setattr(ada, "adamerging_steps", dies_on_the_second_call)
    with pytest.raises(KeyboardInterrupt):
        api.run(cut)
    monkeypatch.setattr(ada, "adamerging_steps", real)
    api.resume("cut", cut["storage"])
    a = optuna.load_study(study_name="whole", storage=whole["storage"])
    b = optuna.load_study(study_name="cut", storage=cut["storage"])
    assert len(b.trials) == 3
    assert b.best_trial.params == a.best_trial.params  # the same trajectory, bit for bit
    assert b.best_trial.user_attrs[ATTR] == a.best_trial.user_attrs[ATTR]


def test_unsuitable_space_and_bad_options():
    layout = PoolLayout(("a", "b"), ("x.layers.0.w", "x.layers.1.w"), ((2,), (2,)), "fp")
    assert coefficient_index(build_space("modelwise", layout, {})).tolist() == [[0, 1], [0, 1]]
    tensor = build_space("layerwise", layout, {"granularity": "tensor"})
    assert coefficient_index(tensor).tolist() == [[0, 2], [1, 3]]
    with pytest.raises(ConfigError, match=r"space\.kind: adamerging learns one coefficient"):
        coefficient_index(build_space("lines", layout, {}))
    with pytest.raises(ConfigError, match=r"searcher\.options\.lr: expected a number"):
        build_searcher("adamerging", {"lr": "fast"})
    with pytest.raises(ConfigError, match=r"searcher\.options\.clamp: expected true or false"):
        build_searcher("adamerging", {"clamp": 1})
    with pytest.raises(ConfigError, match=r"searcher\.options: .*'momentum'"):
        build_searcher("adamerging", {"momentum": 0.9})
