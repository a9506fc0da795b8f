"""Data loading for objectives: sources, fixed subsets, text inputs and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mergesweep.errors import ConfigError, MissingFileError, ObjectiveError
from mergesweep.objectives import build_objective
from mergesweep.objectives.data import subset_indices


def _acc(spec: dict, model, *, seed: int = 0, pool=None) -> float:
    obj = build_objective("t", {"kind": "accuracy", **spec})
    obj.setup(pool, seed=seed)
    return obj.evaluate(model)


def _numpy_accuracy(rows) -> float:
    logits = np.array([r for r, _ in rows])
    labels = np.array([y for _, y in rows])
    return float((logits.argmax(1) == labels).mean())


# -- fixed subsets -------------------------------------------------------------------------
def test_subset_indices_are_fixed_by_the_seed() -> None:
    a, b, c = subset_indices(50, 10, 0), subset_indices(50, 10, 0), subset_indices(50, 10, 1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == 10 and len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    assert np.array_equal(subset_indices(5, None, 0), np.arange(5))
    assert np.array_equal(subset_indices(5, 9, 0), np.arange(5))


def test_two_trials_see_the_same_examples(logit_data, passthrough, make_rows) -> None:
    rows = make_rows(50, 1)  # the train split of logit_data
    objs = []
    for seed in (0, 0, 7):
        obj = build_objective(
            "t", {"kind": "accuracy", "data": str(logit_data), "split": "train", "samples": 12}
        )
        obj.setup(None, seed=seed)
        objs.append(obj)
    assert np.array_equal(objs[0].indices, objs[1].indices)
    assert np.array_equal(objs[0].indices, subset_indices(50, 12, 0))
    assert not np.array_equal(objs[0].indices, objs[2].indices)
    for obj in objs:
        want = _numpy_accuracy([rows[i] for i in obj.indices])
        assert obj.evaluate(passthrough) == pytest.approx(want, abs=1e-12)


# -- sources -------------------------------------------------------------------------------
def test_splits_and_file_formats_agree(tmp_path, logit_data, passthrough, rows, make_rows) -> None:
    from datasets import Dataset

    test_rows = make_rows(20, 2)
    assert _acc({"data": str(logit_data)}, passthrough) == pytest.approx(0.6)
    assert _acc({"data": str(logit_data), "split": "test"}, passthrough) == pytest.approx(
        _numpy_accuracy(test_rows)
    )
    records = [{"pixel_values": r, "label": y} for r, y in rows]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records))
    Dataset.from_list(records).to_parquet(str(tmp_path / "rows.parquet"))
    Dataset.from_list(records).save_to_disk(str(tmp_path / "single"))  # one Dataset, no splits
    for path in (jsonl, tmp_path / "rows.parquet", tmp_path / "single"):
        assert _acc({"data": str(path)}, passthrough) == pytest.approx(0.6), path


def test_named_inputs_and_label_columns(tmp_path, passthrough, rows) -> None:
    from datasets import Dataset

    Dataset.from_dict(
        {"scores": [r for r, _ in rows], "gold": [y for _, y in rows], "label": [9] * len(rows)}
    ).save_to_disk(str(tmp_path / "d"))

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, scores):
            return scores * self.w

    spec = {"data": str(tmp_path / "d"), "inputs": ["scores"], "label": "gold"}
    assert _acc(spec, Named()) == pytest.approx(0.6)


def test_text_inputs_are_tokenized_with_the_pool_tokenizer(tmp_path, text_pool, vocab) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    texts = ["good movie", "bad movie", "very very good", "not good", "bad", "very bad movie"]
    labels = [1, 0, 1, 0, 0, 0]
    Dataset.from_dict({"text": texts, "label": labels}).to_csv(str(tmp_path / "t.csv"))
    obj = build_objective(
        "t", {"kind": "accuracy", "data": str(tmp_path / "t.csv"), "max_length": 4, "batch_size": 4}
    )
    obj.setup(text_pool, seed=0)
    batches = list(obj.batches())
    assert [b["input_ids"].shape for b in batches] == [torch.Size([4, 4]), torch.Size([2, 4])]
    first = texts[int(obj.order[0])].split()[:2]  # batches follow the seeded evaluation order
    want_ids = [2, *(vocab.index(w) for w in first), 3]
    assert batches[0]["input_ids"][0].tolist()[: len(want_ids)] == want_ids
    model = text_pool.model("t")
    tok = AutoTokenizer.from_pretrained(text_pool.spec.base)  # the expert folder has none
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=4, return_tensors="pt")
        want = (model(**enc).logits.argmax(-1) == torch.tensor(labels)).float().mean().item()
    assert obj.evaluate(model) == pytest.approx(want)


# -- bad inputs ----------------------------------------------------------------------------
def test_missing_data_path(tmp_path) -> None:
    with pytest.raises(MissingFileError, match=r"^objectives\.tasks\.t\.data: no such file"):
        build_objective("t", {"kind": "accuracy", "data": str(tmp_path / "nope")})


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"samples": 0}, ConfigError, r"objectives\.tasks\.t\.samples: expected a positive"),
        ({"samples": 2.5}, ConfigError, r"objectives\.tasks\.t\.samples: expected a positive"),
        ({"batch_size": "8"}, ConfigError, r"objectives\.tasks\.t\.batch_size: expected a pos"),
        ({"inputs": "pixel_values"}, ConfigError, r"objectives\.tasks\.t\.inputs: expected a"),
        ({"data": 3}, ConfigError, r"objectives\.tasks\.t\.data: expected a path"),
    ],
)
def test_bad_option_values(logit_data, options, error, match) -> None:
    with pytest.raises(error, match=match):
        build_objective("t", {"kind": "accuracy", "data": str(logit_data), **options})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"split": "dev"},
            r"objectives\.tasks\.t\.split: no split 'dev' .*available: "
            r"train, validation, test",
        ),
        (
            {"label": "gold"},
            r"objectives\.tasks\.t\.label: no column 'gold' in the data; "
            r"columns: pixel_values, label",
        ),
        ({"inputs": ["image"]}, r"objectives\.tasks\.t\.inputs: no column 'image'"),
    ],
)
def test_bad_split_and_columns(logit_data, options, match) -> None:
    obj = build_objective("t", {"kind": "accuracy", "data": str(logit_data), **options})
    with pytest.raises(ObjectiveError, match=match):
        obj.setup(None, seed=0)


def test_bad_data_contents(tmp_path, passthrough) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"validation": Dataset.from_dict({"pixel_values": [], "label": []})}).save_to_disk(
        str(tmp_path / "empty")
    )
    Dataset.from_dict({"x": [1.0]}).save_to_disk(str(tmp_path / "noinputs"))
    Dataset.from_dict({"pixel_values": [[1.0, 0.0]], "label": ["cat"]}).save_to_disk(
        str(tmp_path / "strlabel")
    )
    Dataset.from_dict({"pixel_values": [[1.0, 0.0]], "label": [5]}).save_to_disk(
        str(tmp_path / "range")
    )
    Dataset.from_dict({"pixel_values": [[1.0, 0.0], [1.0]], "label": [0, 1]}).save_to_disk(
        str(tmp_path / "ragged")
    )
    Dataset.from_dict({"pixel_values": [[1.0]], "label": [0]}).select([]).to_parquet(
        str(tmp_path / "empty.parquet")
    )
    (tmp_path / "x.txt").write_text("hi")
    (tmp_path / "notdata").mkdir()
    cases = {
        "empty": r"objectives\.tasks\.t\.data: split 'validation' of .* is empty",
        "noinputs": r"objectives\.tasks\.t\.inputs: the data has neither 'pixel_values' nor 'text'",
        "strlabel": r"objectives\.tasks\.t\.label: column 'label' holds .* integer class ids",
        "ragged": r"objectives\.tasks\.t\.inputs: column 'pixel_values' is ragged",
        "empty.parquet": r"objectives\.tasks\.t\.data: cannot read .* as parquet",
        "x.txt": r"objectives\.tasks\.t\.data: cannot read 'x\.txt'",
        "notdata": r"objectives\.tasks\.t\.data: .* is not a datasets save_to_disk folder",
    }
    for name, match in cases.items():
        obj = build_objective("t", {"kind": "accuracy", "data": str(tmp_path / name)})
        with pytest.raises(ObjectiveError, match=match):
            obj.setup(None, seed=0)
    obj = build_objective("t", {"kind": "accuracy", "data": str(tmp_path / "range")})
    obj.setup(None, seed=0)
    with pytest.raises(ObjectiveError, match=r"label 5 is out of range for a model with 2 outputs"):
        obj.evaluate(passthrough)


def test_pool_related_errors(tmp_path, text_pool, logit_data, passthrough) -> None:
    from datasets import Dataset

    obj = build_objective("t", {"kind": "accuracy", "data": str(logit_data), "head": "other"})
    assert obj.head == "other"
    with pytest.raises(ConfigError, match=r"objectives\.tasks\.t\.head: no expert 'other' .*\(t\)"):
        obj.setup(text_pool, seed=0)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "base" / f).unlink()
    Dataset.from_dict({"text": ["good"], "label": [1]}).save_to_disk(str(tmp_path / "txt"))
    obj = build_objective("t", {"kind": "accuracy", "data": str(tmp_path / "txt")})
    with pytest.raises(ObjectiveError, match=r"objectives\.tasks\.t\.inputs: .* needs a tokenizer"):
        obj.setup(text_pool, seed=0)
    fresh = build_objective("t", {"kind": "accuracy", "data": str(logit_data)})
    with pytest.raises(RuntimeError, match=r"call setup\(pool, seed\) first"):
        fresh.evaluate(passthrough)


def test_save_rows_helper_round_trips(tmp_path, rows, write_rows) -> None:
    from datasets import load_from_disk

    path = write_rows(tmp_path / "r", {"validation": rows})
    got = load_from_disk(str(path))["validation"].with_format("numpy")[:]
    assert np.allclose(got["pixel_values"], [r for r, _ in rows])
