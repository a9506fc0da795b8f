"""The lm-eval objective: options, one reused HFLM that sees in-place merges, fixed subsets.

Fast tests use the ``tiny_lm`` fixture (a random GPT-2 and two small multiple-choice tasks);
the slow ones score the ``lm`` zoo, inline and in a Ray worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergesweep.errors import ConfigError, MissingFileError, ObjectiveError
from mergesweep.merge import PrepareContext, build_method
from mergesweep.objectives import build_objective
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool, PoolSpec

pytest.importorskip("lm_eval")


def _spec(tiny: dict[str, Path], **changes) -> dict:
    spec = {
        "kind": "lmeval",
        "tasks": "tiny_yesno",
        "include_path": str(tiny["tasks"]),
        "num_fewshot": 0,
        "samples": None,
        "dtype": "float32",
    }
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not ...}


@pytest.fixture(scope="module")
def tiny_pool(tiny_lm) -> ModelPool:
    return ModelPool(
        PoolSpec(
            base=str(tiny_lm["base"]), experts={"a": str(tiny_lm["a"]), "b": str(tiny_lm["b"])}
        )
    )


def _merge(pool: ModelPool, lam: float) -> None:
    method = build_method("task_arithmetic")
    method.prepare(pool, PrepareContext())
    method.apply(pool, MergePlan.uniform(pool.layout.num_tensors, [lam, lam]))


def _fresh_score(tiny, pool: ModelPool, spec: dict) -> float:
    """The same objective over an independent copy of the merged model (a new HFLM)."""
    from transformers import GPT2LMHeadModel

    copy = GPT2LMHeadModel.from_pretrained(str(tiny["base"])).eval()
    copy.load_state_dict({n: t.detach().clone() for n, t in pool.model("a").state_dict().items()})
    obj = build_objective("a", spec)
    obj.setup(pool, seed=0)
    return obj.evaluate(copy)


# -- options ---------------------------------------------------------------------------------
def test_score_changing_settings_must_be_explicit(tiny_lm) -> None:
    with pytest.raises(ConfigError, match=r"^objectives\.tasks\.a\.num_fewshot: required"):
        build_objective("a", _spec(tiny_lm, num_fewshot=...))
    with pytest.raises(ConfigError, match=r"^objectives\.tasks\.a\.dtype: required"):
        build_objective("a", _spec(tiny_lm, dtype=...))
    with pytest.raises(ConfigError, match=r"^objectives\.tasks\.a\.samples: give exactly one"):
        build_objective("a", _spec(tiny_lm, samples=...))
    with pytest.raises(ConfigError, match=r"^objectives\.tasks\.a\.samples: give exactly one"):
        build_objective("a", _spec(tiny_lm, limit=5))
    obj = build_objective("a", _spec(tiny_lm, samples=..., limit=None))
    assert obj.limit is None and obj.samples is None
    settings = obj.settings()
    assert settings["num_fewshot"] == 0 and settings["dtype"] == "float32"
    assert settings["metric"] == "acc,none" and settings["apply_chat_template"] is False


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"dtype": "int8"}, ConfigError, r"\.dtype: expected one of float32, bfloat16, float16"),
        ({"num_fewshot": -1}, ConfigError, r"\.num_fewshot: expected an integer >= 0"),
        ({"samples": 0}, ConfigError, r"\.samples: expected a positive integer or null"),
        ({"samples": ..., "limit": 1.5}, ConfigError, r"\.limit: expected a positive integer, a"),
        ({"tasks": []}, ConfigError, r"\.tasks: expected a task name or a list"),
        ({"include_path": "/no/such"}, MissingFileError, r"\.include_path: no such folder"),
        ({"include_path": None}, ConfigError, r"\.include_path: give a folder of task YAMLs"),
        ({"direction": "up"}, ConfigError, r"\.direction: expected maximize or minimize"),
        ({"batch_size": 0}, ConfigError, r"\.batch_size: expected a positive integer"),
    ],
)
def test_bad_options_name_their_key(tiny_lm, change, error, match) -> None:
    with pytest.raises(error, match=rf"^objectives\.tasks\.a{match}"):
        build_objective("a", _spec(tiny_lm, **change))


def test_unknown_task_metric_and_dtype_are_named(tiny_lm, tiny_pool) -> None:
    obj = build_objective("a", _spec(tiny_lm, tasks="nope"))
    with pytest.raises(ObjectiveError, match=r"\.tasks: unknown lm-eval task 'nope'; known: tiny,"):
        obj.setup(tiny_pool, seed=0)
    obj = build_objective("a", _spec(tiny_lm, metric="f1", samples=4))
    obj.setup(tiny_pool, seed=0)
    with pytest.raises(ObjectiveError, match=r"\.metric: .*'tiny_yesno' reports no 'f1,none'"):
        obj.evaluate(tiny_pool.model("a"))
    obj = build_objective("a", _spec(tiny_lm, num_fewshot=2))
    obj.setup(tiny_pool, seed=0)
    with pytest.raises(ObjectiveError, match=r"\.dtype: the model is bfloat16"):
        obj.lm(torch.nn.Linear(2, 2).to(torch.bfloat16))


# -- evaluation ------------------------------------------------------------------------------
def test_one_hflm_per_model_sees_in_place_merges(tiny_lm, tiny_pool) -> None:
    spec = _spec(tiny_lm, tasks="tiny_ppl", metric="word_perplexity", direction="minimize")
    obj = build_objective("a", spec)
    assert obj.direction == "minimize"
    obj.setup(tiny_pool, seed=0)
    model = tiny_pool.model("a")
    lm = obj.lm(model)
    scores = {}
    for lam in (0.0, 1.0):
        _merge(tiny_pool, lam)
        scores[lam] = obj.evaluate(model)
        assert obj.lm(model) is lm  # reused across trials
        # A new HFLM over an independent copy of the merged weights scores the same.
        assert scores[lam] == _fresh_score(tiny_lm, tiny_pool, spec)
    assert scores[0.0] != scores[1.0]  # the merge is seen
    # Another objective on the same model and settings shares the HFLM.
    other = build_objective("a", _spec(tiny_lm, tasks="tiny_color"))
    other.setup(tiny_pool, seed=0)
    assert other.lm(model) is lm
    # Several tasks: the value is the mean of their metrics.
    both = build_objective("a", _spec(tiny_lm, tasks=["tiny_yesno", "tiny_color"]))
    both.setup(tiny_pool, seed=0)
    res = both.results(model)
    mean = (res["tiny_yesno"]["acc,none"] + res["tiny_color"]["acc,none"]) / 2
    assert both.evaluate(model) == pytest.approx(mean)


def test_samples_are_fixed_by_seed_and_limit_takes_the_first(tiny_lm, tiny_pool) -> None:
    _merge(tiny_pool, 0.5)
    model = tiny_pool.model("a")
    a = build_objective("a", _spec(tiny_lm, samples=7))
    a.setup(tiny_pool, seed=3)
    b = build_objective("a", _spec(tiny_lm, samples=7))
    b.setup(tiny_pool, seed=3)
    c = build_objective("a", _spec(tiny_lm, samples=7))
    c.setup(tiny_pool, seed=4)
    assert a._sample_idx == b._sample_idx != c._sample_idx
    assert len(a._sample_idx["tiny_yesno"]) == 7
    assert a.results(model)["tiny_yesno"]["sample_len"] == 7
    assert a.evaluate(model) == b.evaluate(model)
    lim = build_objective("a", _spec(tiny_lm, samples=..., limit=5))
    lim.setup(tiny_pool, seed=0)
    assert lim.results(model)["tiny_yesno"]["sample_len"] == 5


def test_few_shot_examples_are_the_same_every_trial(tiny_lm, tiny_pool) -> None:
    _merge(tiny_pool, 0.5)
    obj = build_objective("a", _spec(tiny_lm, num_fewshot=3, tasks="tiny"))
    obj.setup(tiny_pool, seed=0)
    model = tiny_pool.model("a")
    task = obj._loaded["tasks"]["tiny_yesno"]

    def contexts() -> list[str]:
        return [inst.args[0] for inst in task.instances]

    first_score = obj.evaluate(model)
    first = contexts()
    assert obj.evaluate(model) == first_score and contexts() == first
    assert all(c.count("\nA:") == 4 for c in first)  # 3 shots + the question
    zero = build_objective("a", _spec(tiny_lm, tasks="tiny_yesno"))
    zero.setup(tiny_pool, seed=0)
    zero.evaluate(model)
    assert all(
        c.count("\nA:") == 1
        for c in (i.args[0] for i in zero._loaded["tasks"]["tiny_yesno"].instances)
    )


def test_reused_requests_and_encodings_score_as_stock_lm_eval(tiny_lm, tiny_pool) -> None:
    """Requests built and tokenised once per worker give stock lm-eval's numbers every trial."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = ["tiny_yesno", "tiny_color"]
    obj = build_objective("a", _spec(tiny_lm, tasks=names, num_fewshot=2))
    obj.setup(tiny_pool, seed=0)
    model = tiny_pool.model("a")
    lm = obj.lm(model)
    task = obj._loaded["tasks"]["tiny_yesno"]
    seen: list = []
    lls = set()
    encoded: list[int] = []  # the HFLM is shared per model, so other tests' pairs may be there
    for lam in (0.0, 0.7, 1.4):
        _merge(tiny_pool, lam)
        ours = obj.results(model)
        seen.append(task.instances[0])
        # Stock lm-eval: a fresh task dict and a fresh HFLM over the same live weights.
        stock_tasks = TaskManager(include_path=str(tiny_lm["tasks"])).load(names)
        for t in stock_tasks["tasks"].values():
            t.set_config(key="num_fewshot", value=2)
            t.set_fewshot_seed(seed=0)
        stock_lm = HFLM(pretrained=model, tokenizer=obj._tokenizer, batch_size=32)
        stock = evaluator.evaluate(stock_lm, stock_tasks, bootstrap_iters=0, log_samples=False)
        for name in names:
            for metric in ("acc,none", "acc_norm,none"):
                assert ours[name][metric] == stock["results"][name][metric], (lam, name, metric)
        # Per request, the log-likelihoods are bit-identical to stock HFLM's.
        requests = [i for t in obj._loaded["tasks"].values() for i in t.instances]
        assert [i.args for i in requests] == [
            i.args for t in stock_tasks["tasks"].values() for i in t.instances
        ]
        assert lm.loglikelihood(requests) == stock_lm.loglikelihood(requests)
        lls.add(requests[0].resps[0][0])
        encoded.append(len(lm._pairs))
    assert seen[0] is seen[1] is seen[2]  # built once, reused with responses cleared
    assert len(task.instances[0].resps) == 1  # this trial's response only
    assert {i.args for i in requests} <= set(lm._pairs)
    assert encoded[0] == encoded[1] == encoded[2]  # each pair encoded once, in the first trial
    assert len(lls) == 3  # each merge is seen


def test_bfloat16_autocast_over_a_float32_model(tiny_lm, tiny_pool) -> None:
    _merge(tiny_pool, 0.5)
    model = tiny_pool.model("b")
    full = build_objective("b", _spec(tiny_lm, metric="acc_norm"))
    half = build_objective("b", _spec(tiny_lm, metric="acc_norm", dtype="bfloat16"))
    for obj in (full, half):
        obj.setup(tiny_pool, seed=0)
    assert full.lm(model) is not half.lm(model)
    assert half.lm(model).mixed_precision_dtype == torch.bfloat16
    assert 0.0 <= half.evaluate(model) <= 1.0
    assert next(model.parameters()).dtype == torch.float32  # the live model is not cast


def test_forward_time_is_reported_per_trial_and_reset(tiny_lm, tiny_pool, tmp_path) -> None:
    """``forward_s`` is the time inside the model's forward passes: part of the evaluation,
    counted per objective since the last ``take_timings``, and in a worker's trial timings."""
    import time

    from mergesweep.runtime.base import Job
    from mergesweep.runtime.worker import Evaluator

    obj = build_objective("a", _spec(tiny_lm, tasks=["tiny_yesno", "tiny_color"]))
    obj.setup(tiny_pool, seed=0)
    model = tiny_pool.model("a")
    obj.evaluate(model)
    obj.take_timings()
    t0 = time.perf_counter()
    obj.evaluate(model)
    spent = time.perf_counter() - t0
    forward = obj.take_timings()["forward_s"]
    assert 0.0 < forward < spent
    assert obj.take_timings() == {"forward_s": 0.0}  # reset by the read
    # Another objective sharing the HFLM does not count this one's passes.
    other = build_objective("a", _spec(tiny_lm, tasks="tiny_color"))
    other.setup(tiny_pool, seed=0)
    obj.evaluate(model)
    assert other.take_timings() == {"forward_s": 0.0} and obj.take_timings()["forward_s"] > 0
    config = {
        "name": "fw",
        "storage": f"sqlite:///{tmp_path / 'fw.db'}",
        "pool": {"base": str(tiny_lm["base"]), "experts": {k: str(tiny_lm[k]) for k in "ab"}},
        "space": {"kind": "modelwise"},
        "objectives": {"tasks": {t: _spec(tiny_lm, tasks="tiny_yesno") for t in "ab"}},
        "executor": {"kind": "inline", "threads": 1},
    }
    evaluator = Evaluator(config)
    plan = MergePlan.uniform(evaluator.pool.layout.num_tensors, [0.5, 0.5])
    result = evaluator.evaluate(Job(0, plan))
    assert result.error is None
    assert 0.0 < result.timings["forward_s"] < result.timings["eval_s"]
    # A sweep stores it with the trial, and `mergesweep show` lists it.
    import optuna
    import yaml
    from click.testing import CliRunner

    from mergesweep.cli import main

    path = tmp_path / "fw.yaml"
    path.write_text(yaml.safe_dump({**config, "budget": {"trials": 2}}))
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(path), "--no-progress"]).exit_code == 0
    study = optuna.load_study(study_name="fw", storage=config["storage"])
    for t in study.trials:
        timings = t.user_attrs["timings"]
        assert 0.0 < timings["forward_s"] < timings["eval_s"]
    shown = runner.invoke(main, ["show", "fw", "--storage", config["storage"]]).output
    assert "forward s" in shown


# -- the lm zoo ------------------------------------------------------------------------------
def _lm_config(zoo: Path, tmp_path: Path, **executor) -> dict:
    tasks = {
        t: {
            "kind": "lmeval",
            "tasks": f"ms_{t}",
            "include_path": str(zoo / "tasks"),
            "num_fewshot": 0,
            "samples": 60,
            "dtype": "float32",
        }
        for t in ("topic", "sentiment")
    }
    return {
        "name": "lm",
        "storage": f"sqlite:///{tmp_path / 'lm.db'}",
        "pool": {
            "base": str(zoo / "base"),
            "experts": {t: str(zoo / "experts" / t) for t in ("topic", "sentiment")},
        },
        "space": {"kind": "modelwise", "options": {"low": 0.0, "high": 1.0}},
        "objectives": {"tasks": tasks},
        "searcher": {"name": "random", "enqueue": [{"lambda.topic": 1.0, "lambda.sentiment": 0.0}]},
        "budget": {"trials": 2},
        "executor": {"threads": 1, **executor},
    }


@pytest.mark.slow
def test_lm_zoo_experts_score_as_the_build_measured(lm_zoo) -> None:
    """lm-eval's acc on the full test split equals the zoo build's own scorer."""
    import json

    manifest = json.loads((lm_zoo / "zoo.json").read_text())
    pool = ModelPool(
        PoolSpec(
            base=str(lm_zoo / "base"),
            experts={t: str(lm_zoo / "experts" / t) for t in ("topic", "sentiment")},
        )
    )
    method = build_method("task_arithmetic")
    method.prepare(pool, PrepareContext())
    method.apply(pool, MergePlan.uniform(pool.layout.num_tensors, [1.0, 0.0]))  # = topic expert
    obj = build_objective(
        "topic",
        {
            "kind": "lmeval",
            "tasks": "ms_topic_test",
            "include_path": str(lm_zoo / "tasks"),
            "num_fewshot": 0,
            "samples": None,
            "dtype": "float32",
            "batch_size": 64,
        },
    )
    obj.setup(pool, seed=0)
    got = obj.evaluate(pool.model("topic"))
    assert got == pytest.approx(manifest["accuracy"]["experts"]["test"]["topic"], abs=1e-4)
    assert got > 0.3  # chance is 0.2


@pytest.mark.slow
def test_lm_zoo_sweep_in_a_ray_worker_matches_inline(lm_zoo, tmp_path) -> None:
    """The objective inside a Ray actor gives the same per-task metrics as inline."""
    pytest.importorskip("ray")
    from mergesweep import api

    try:
        from mergesweep.runtime import ray_executor  # noqa: F401
    except ImportError:
        pytest.skip("no Ray executor")
    import logging

    import optuna
    import ray

    inline = api.run(_lm_config(lm_zoo, tmp_path, kind="inline"))
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING)
    try:
        cfg = _lm_config(lm_zoo, tmp_path, kind="ray", workers=1)
        cfg["name"] = "lm_ray"
        remote = api.run(cfg)
    finally:
        ray.shutdown()
    assert inline.complete == remote.complete == 2
    trials = {
        name: optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'lm.db'}")
        .trials[0]
        .user_attrs
        for name in ("lm", "lm_ray")
    }
    assert trials["lm"]["metrics"] == trials["lm_ray"]["metrics"]
    assert trials["lm"]["metrics"]["topic"] > 0.3
    assert trials["lm_ray"]["timings"]["eval_s"] > 0
