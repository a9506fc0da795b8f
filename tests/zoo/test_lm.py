"""The lm zoo (slow: it pre-trains a GPT-2): tokenizer, lm-eval task files, measured
accuracies, and the lm-eval experiment end to end (sweep, then export with mergekit.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_lm_zoo_files_tokenizer_and_measured_accuracies(lm_zoo) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = json.loads((lm_zoo / "zoo.json").read_text())
    assert manifest["tasks"] == ["topic", "sentiment"] and manifest["vocab_size"] == 2048
    tok = AutoTokenizer.from_pretrained(str(lm_zoo / "base"))
    assert len(tok) == 2048 and tok.decode(tok.encode("Topic: sports")) == "Topic: sports"
    model = AutoModelForCausalLM.from_pretrained(str(lm_zoo / "experts" / "topic"))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.config.n_layer == 4 and model.config.n_embd == 128
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=str(lm_zoo / "tasks"), include_defaults=False).load(
        ["mergesweep_lm"]
    )["tasks"]
    assert sorted(loaded) == ["ms_sentiment", "ms_sentiment_test", "ms_topic", "ms_topic_test"]
    sizes = manifest["sizes"]
    assert len(loaded["ms_topic_test"].eval_docs) == sizes["topic/test"] == 300
    assert len(loaded["ms_sentiment"].eval_docs) == sizes["sentiment/validation"] == 500
    assert loaded["ms_topic"].OUTPUT_TYPE == "multiple_choice"
    acc = manifest["accuracy"]
    experts, base = acc["experts"]["test"], acc["base"]["test"]
    assert experts["topic"] > 0.35 and experts["sentiment"] > 0.45  # chance 0.2, majority ~0.42
    assert experts["mean"] > base["mean"]


def test_lm_experiment_sweeps_and_exports(lm_zoo, tmp_path) -> None:
    import optuna
    from transformers import AutoModelForCausalLM

    from mergesweep import api
    from mergesweep.export import export_trial

    storage = f"sqlite:///{tmp_path / 's.db'}"
    overrides = [
        f"storage={storage}",
        "budget.trials=2",
        "objectives.tasks.topic.samples=40",
        "objectives.tasks.sentiment.samples=40",
    ]
    assert api.run(EXPERIMENTS / "lm_lmeval_cmaes.yaml", overrides).complete == 2
    study = optuna.load_study(study_name="lm_lmeval_cmaes", storage=storage)
    best = max(study.trials, key=lambda t: t.value)
    result = export_trial("lm_lmeval_cmaes", best.number, tmp_path / "out", storage=storage)
    assert result.layout == "single" and result.exported_metrics == best.user_attrs["metrics"]
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert model.lm_head.weight is model.transformer.wte.weight
    mk = yaml.safe_load((tmp_path / "out" / "mergekit.yaml").read_text())
    assert mk["merge_method"] == "task_arithmetic" and len(mk["models"]) == 2
    assert isinstance(mk["models"][0]["parameters"]["weight"], list)  # per-layer weights
