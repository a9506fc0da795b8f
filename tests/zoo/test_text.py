"""The text zoo: its corpora and splits, and (slow: building it fine-tunes MiniLM three times)
its files, measured accuracies and a short sweep of each text experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergesweep.zoo import corpora, text

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TASKS = ("topic", "sentiment", "language")


def test_corpora_are_read_offline_and_split_without_overlap() -> None:
    sizes = {"topic": (None, 300, 300), "sentiment": (6000, 500, 500), "language": (None, 300, 300)}
    for task, (train, val, test) in sizes.items():
        data = corpora.load_task(task, text.RECIPE["data"])
        assert len(data.splits["validation"]) == val and len(data.splits["test"]) == test
        assert train is None or len(data.splits["train"]) == train
        texts = {s: {e.text for e in exs} for s, exs in data.splits.items()}
        assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
        labels = {e.label for e in data.splits["train"]}
        assert labels == set(range(len(data.label_names)))
    topic = corpora.load_task("topic", text.RECIPE["data"])
    assert topic.label_names == ("business", "entertainment", "politics", "sports", "tech")
    first = topic.splits["test"][0]
    assert first.text == f"{first.fields['title']}. {first.fields['body']}"
    assert len(first.fields["body"]) <= 300
    language = corpora.load_task("language", text.RECIPE["data"])
    assert len(language.label_names) == 8
    assert all(len(e.text.split()) >= 3 for e in language.splits["train"])


@pytest.mark.slow
def test_text_zoo_files_and_measured_accuracies(text_zoo) -> None:
    from datasets import load_from_disk

    manifest = json.loads((text_zoo / "zoo.json").read_text())
    assert manifest["tasks"] == list(TASKS)
    assert manifest["pool"]["include"] == [r"bert\..*"]
    for task in TASKS:
        assert (text_zoo / "experts" / task / "model.safetensors").is_file()
        assert (text_zoo / "experts" / task / "tokenizer.json").is_file()
        data = load_from_disk(str(text_zoo / "data" / task))
        assert set(data) == {"train", "validation", "test"}
        assert data["test"].features["label"].names == manifest["label_names"][task]
    acc = manifest["accuracy"]
    experts, base = acc["experts"]["test"], acc["base_heads"]["test"]
    assert experts["mean"] > 0.75  # the design's recipe measured 0.867
    assert all(experts[t] > base[t] for t in TASKS)
    ta = acc["task_arithmetic"]
    assert max(ta[k]["test"]["mean"] for k in ta) > base["mean"] + 0.15


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text_taskwise_tpe", "text_layerwise_bo"])
def test_text_experiments_run_a_short_sweep(name, text_zoo, tmp_path) -> None:
    import optuna

    from mergesweep import api

    if name.endswith("_bo"):
        pytest.importorskip("botorch")
    overrides = [
        f"storage=sqlite:///{tmp_path / 's.db'}",
        "budget.trials=2",
        *(f"objectives.tasks.{t}.samples=64" for t in TASKS),
    ]
    summary = api.run(EXPERIMENTS / f"{name}.yaml", overrides)
    assert summary.complete == 2
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 's.db'}")
    first = study.trials[0]
    assert first.user_attrs.get("enqueued") and set(first.user_attrs["metrics"]) == set(TASKS)
    assert 0.3 < first.value <= 1.0  # λ = 0.3 everywhere: well above the base's 0.32


@pytest.mark.slow
def test_pruning_experiment_prunes_and_completes(text_zoo, tmp_path) -> None:
    import optuna
    from optuna.trial import TrialState

    from mergesweep import api

    url = f"sqlite:///{tmp_path / 's.db'}"
    overrides = [
        f"storage={url}",
        "budget.trials=8",
        "pruning.startup_trials=2",
        *(f"objectives.tasks.{t}.samples=64" for t in TASKS),
    ]
    summary = api.run(EXPERIMENTS / "pruning_text.yaml", overrides)
    trials = optuna.load_study(study_name="pruning_text", storage=url).trials
    states = [t.state for t in trials]
    assert len(trials) == 8 and TrialState.FAIL not in states
    assert summary.pruned == states.count(TrialState.PRUNED) >= 1
    # After two complete trials, each new one scores the disputed examples first.
    orders = [t.user_attrs["rungs"][0]["order"] for t in trials]
    assert orders == ["seeded"] * 2 + ["contentious"] * 6
    for t in trials:
        rungs = t.user_attrs["rungs"]
        examples = [sum(r["examples"].values()) for r in rungs]
        if t.state == TrialState.COMPLETE:
            # 5%, 20%, then the rest of 64 examples per task: each example scored once
            assert [r["fraction"] for r in rungs] == [0.05, 0.2, 1.0]
            assert examples == [3 * 4, 3 * (13 - 4), 3 * (64 - 13)]
        else:
            assert t.values[0] == t.intermediate_values[max(t.intermediate_values)]
