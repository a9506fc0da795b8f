"""Export: a trial re-merged in a fresh pool, written as HF folders that reload and score the
same, with mergekit.yaml where mergekit can express the merge."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from mergesweep import api
from mergesweep.cli import main
from mergesweep.errors import ConfigError
from mergesweep.export import export_trial
from mergesweep.objectives import build_objective
from mergesweep.pool import ModelPool, PoolSpec
from mergesweep.spaces import build_space

TASKS = ("low", "high", "parity", "loop")


@pytest.fixture(scope="module")
def digits_study(digits_zoo, tmp_path_factory) -> tuple[str, Path]:
    """Two layer-wise trials over the digits zoo (the second one non-uniform)."""
    storage = f"sqlite:///{tmp_path_factory.mktemp('export-digits') / 'studies.db'}"
    api.run(
        {
            "name": "t",
            "storage": storage,
            "pool": {
                "base": str(digits_zoo / "base"),
                "experts": {t: str(digits_zoo / "experts" / t) for t in TASKS},
                "include": [r"vit\..*"],
            },
            "space": {"kind": "layerwise", "options": {"granularity": "block"}},
            "objectives": {
                "tasks": {
                    t: {"kind": "accuracy", "data": str(digits_zoo / "data" / t), "samples": 100}
                    for t in TASKS
                }
            },
            "searcher": {"name": "random", "enqueue": ["init"]},
            "budget": {"trials": 2},
            "executor": {"kind": "inline"},
        }
    )
    return storage, digits_zoo


def test_digits_export_reloads_and_scores_as_the_trial(digits_study, tmp_path) -> None:
    from transformers import AutoModelForImageClassification

    storage, zoo = digits_study
    trial = optuna.load_study(study_name="t", storage=storage).trials[1]
    out = tmp_path / "out"
    result = export_trial("t", 1, out, storage=storage)
    assert result.layout == "per_task"  # each task keeps its own head
    assert result.exported_metrics == trial.user_attrs["metrics"]
    assert (out / "MERGEKIT.md").read_text().count("classifier.") >= 1
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["folders"] == {t: t for t in TASKS} and manifest["trial"] == 1
    # Independently: each folder loads with AutoModel*, holds θ₀ + Σₖ λₖτₖ and scores the same.
    base = AutoModelForImageClassification.from_pretrained(str(zoo / "base")).state_dict()
    experts = {
        t: AutoModelForImageClassification.from_pretrained(str(zoo / "experts" / t)).state_dict()
        for t in TASKS
    }
    name = "vit.layers.1.mlp.fc1.weight"
    names = [n for n in base if n.startswith("vit.")]
    assert name in names
    layout = ModelPool(
        PoolSpec(
            base=str(zoo / "base"),
            experts={t: str(zoo / "experts" / t) for t in TASKS},
            include=(r"vit\..*",),
        )
    ).layout
    plan = build_space("layerwise", layout, {"granularity": "block"}).to_plan(trial.params)
    row = plan.coefficients[layout.names.index(name)]
    want = base[name] + sum(
        float(row[k]) * (experts[t][name] - base[name]) for k, t in enumerate(TASKS)
    )
    for task in TASKS:
        model = AutoModelForImageClassification.from_pretrained(str(out / task)).eval()
        torch.testing.assert_close(model.state_dict()[name], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.classifier.weight, experts[task]["classifier.weight"])
        obj = build_objective(
            task, {"kind": "accuracy", "data": str(zoo / "data" / task), "samples": 100}
        )
        obj.setup(None, seed=0)
        assert obj.evaluate(model) == trial.user_attrs["metrics"][task]


def test_export_cli_and_its_errors(digits_study, tmp_path) -> None:
    storage, _ = digits_study
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["export", "t", "--trial", "0", "--out", str(out), "--storage", storage]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (
        "one model per task" in res.output and "no mergekit config: the task models" in res.output
    )
    assert (out / "low" / "config.json").is_file()
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "--out: " in res.output and "pass --force" in res.output
    assert runner.invoke(main, [*args, "--force", "--no-check"]).exit_code == 0
    res = runner.invoke(
        main, ["export", "t", "--trial", "7", "--out", str(tmp_path / "x"), "--storage", storage]
    )
    assert res.exit_code == 2 and "--trial: study 't' has no trial 7" in res.output
    with pytest.raises(ConfigError, match=r"--trial: study 't' has no trial -1"):
        export_trial("t", -1, tmp_path / "y", storage=storage)


# -- a causal LM: one model, tied embeddings, mergekit.yaml -----------------------------------
@pytest.fixture
def score_module(tmp_path, monkeypatch) -> str:
    """A callable objective: the mean log-probability of a fixed token sequence."""
    (tmp_path / "lm_score_fn.py").write_text(
        textwrap.dedent(
            """
            import torch

            def logprob(model, task):
                ids = torch.arange(1, 40).view(1, -1) % model.config.vocab_size
                with torch.inference_mode():
                    logits = model(input_ids=ids).logits[0, :-1].float()
                return float(logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).mean())
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "lm_score_fn:logprob"


def _lm_study(tiny_lm, tmp_path, fn: str, **method) -> dict:
    return {
        "name": "lm",
        "storage": f"sqlite:///{tmp_path / 'lm.db'}",
        "pool": {"base": str(tiny_lm["base"]), "experts": {t: str(tiny_lm[t]) for t in "ab"}},
        "method": method or {"name": "task_arithmetic"},
        "space": {"kind": "layerwise", "options": {"granularity": "block"}},
        "objectives": {"tasks": {t: {"kind": "callable", "function": fn} for t in "ab"}},
        "searcher": {"name": "random"},
        "budget": {"trials": 1},
        "executor": {"kind": "inline"},
    }


def _mergekit_value(setting, tensor: str) -> float:
    """mergekit's lookup: a scalar, or the first condition whose filter is in the name."""
    if isinstance(setting, (int, float)):
        return float(setting)
    return float(next(c["value"] for c in setting if c["filter"] in tensor))


def test_causal_lm_exports_one_tied_model_and_a_mergekit_yaml(
    tiny_lm, tmp_path, score_module
) -> None:
    from transformers import AutoModelForCausalLM

    cfg = _lm_study(
        tiny_lm, tmp_path, score_module, name="ties", options={"density": 0.5, "merge": "sum"}
    )
    api.run(cfg)
    trial = optuna.load_study(study_name="lm", storage=cfg["storage"]).trials[0]
    out = tmp_path / "out"
    result = export_trial("lm", 0, out, storage=cfg["storage"])
    assert result.layout == "single"  # every tensor is merged: both task models are one model
    assert result.exported_metrics == trial.user_attrs["metrics"]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after the merge
    assert (out / "tokenizer.json").is_file() and not (out / "a").exists()
    # The YAML encodes the trial's per-tensor coefficients for mergekit's first-match filters.
    mk = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert (
        (out / "mergekit.yaml").read_text().startswith("# mergesweep export: study 'lm', trial 0")
    )
    assert mk["merge_method"] == "ties" and mk["parameters"] == {"normalize": False}
    assert mk["base_model"] == str(tiny_lm["base"].resolve())
    pool = ModelPool(
        PoolSpec(base=str(tiny_lm["base"]), experts={t: str(tiny_lm[t]) for t in "ab"})
    )
    plan = build_space("layerwise", pool.layout, {"granularity": "block"}).to_plan(trial.params)
    assert len({tuple(r) for r in plan.coefficients}) > 1  # a real per-layer plan
    for k, entry in enumerate(mk["models"]):
        assert entry["model"] == str(tiny_lm["ab"[k]].resolve())
        assert entry["parameters"]["density"] == 0.5
        for i, name in enumerate(pool.layout.names):
            short = name.removeprefix("transformer.")  # mergekit's GPT-2 names
            for tensor in (name, short):
                got = _mergekit_value(entry["parameters"]["weight"], tensor)
                assert got == pytest.approx(plan.coefficients[i, k], abs=1e-9)


def test_mergekit_note_when_the_method_has_no_equivalent(tiny_lm, tmp_path, score_module) -> None:
    cfg = _lm_study(tiny_lm, tmp_path, score_module, name="ties", options={"merge": "mean"})
    api.run(cfg)
    result = export_trial("lm", 0, tmp_path / "out", storage=cfg["storage"], check=False)
    assert result.mergekit is None and not (tmp_path / "out" / "mergekit.yaml").exists()
    assert "merge: mean" in result.mergekit_note
    assert "merge: mean" in (tmp_path / "out" / "MERGEKIT.md").read_text()
    assert result.exported_metrics == {}
