"""Accuracy, cross-entropy and entropy against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mergesweep.objectives import build_objective
from mergesweep.objectives.classification import prediction_entropy


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def _ce(row: list[float], label: int) -> float:
    return -math.log(_softmax(row)[label])


def _entropy(row: list[float]) -> float:
    return -sum(p * math.log(p + 1e-8) for p in _softmax(row))


def _run(kind: str, data, model, **options) -> float:
    obj = build_objective("t", {"kind": kind, "data": str(data), **options})
    obj.setup(None, seed=0)
    return obj.evaluate(model)


@pytest.mark.parametrize("batch_size", [64, 2])  # one batch; three with a short last one
def test_accuracy_by_hand(logit_data, passthrough, batch_size) -> None:
    # right on rows 0, 1 and 4; row 2 is wrong; row 3 ties and argmax picks class 0, not 2
    assert _run("accuracy", logit_data, passthrough, batch_size=batch_size) == pytest.approx(
        3 / 5, abs=1e-12
    )


@pytest.mark.parametrize("batch_size", [64, 2])
def test_cross_entropy_by_hand(logit_data, passthrough, rows, batch_size) -> None:
    want = sum(_ce(r, y) for r, y in rows) / len(rows)
    # e.g. row 3: three equal logits, -log(1/3)
    assert _ce(*rows[3]) == pytest.approx(math.log(3))
    got = _run("cross_entropy", logit_data, passthrough, batch_size=batch_size)
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("batch_size", [64, 2])
def test_entropy_by_hand(logit_data, passthrough, rows, batch_size) -> None:
    want = sum(_entropy(r) for r, _ in rows) / len(rows)
    got = _run("entropy", logit_data, passthrough, batch_size=batch_size)
    assert got == pytest.approx(want, rel=1e-6)


def test_entropy_reads_no_labels(tmp_path, passthrough, rows) -> None:
    from datasets import Dataset

    Dataset.from_dict({"pixel_values": [r for r, _ in rows]}).save_to_disk(str(tmp_path / "u"))
    got = _run("entropy", tmp_path / "u", passthrough)
    assert got == pytest.approx(sum(_entropy(r) for r, _ in rows) / len(rows), rel=1e-6)


def test_prediction_entropy_extremes() -> None:
    uniform = prediction_entropy(torch.zeros(1, 4))
    assert uniform.item() == pytest.approx(math.log(4), rel=1e-6)
    assert prediction_entropy(torch.tensor([[100.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_directions_and_metric_names(logit_data) -> None:
    made = {
        k: build_objective("t", {"kind": k, "data": str(logit_data)})
        for k in ("accuracy", "cross_entropy", "entropy")
    }
    assert {k: (o.metric, o.direction) for k, o in made.items()} == {
        "accuracy": ("accuracy", "maximize"),
        "cross_entropy": ("cross_entropy", "minimize"),
        "entropy": ("entropy", "minimize"),
    }


def test_batches_and_logits(logit_data, passthrough, rows) -> None:
    obj = build_objective("t", {"kind": "accuracy", "data": str(logit_data), "batch_size": 2})
    obj.setup(None, seed=0)
    batches = list(obj.batches())
    assert [b["pixel_values"].shape[0] for b in batches] == [2, 2, 1]
    assert len(list(obj.batches(limit=2))) == 2
    logits = torch.cat([obj.logits(passthrough, b) for b in batches])
    # Batches follow the seeded evaluation order (pruning's nested prefixes).
    assert sorted(obj.order.tolist()) == list(range(len(rows)))
    assert torch.equal(logits.detach(), torch.tensor([rows[i][0] for i in obj.order]))
