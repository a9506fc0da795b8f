"""The digits zoo: recipe hash, atomic builds, files, expert quality and a real TA optimum."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mergesweep.errors import MissingFileError, UnknownNameError
from mergesweep.merge import build_method
from mergesweep.objectives import build_objective
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool, PoolSpec
from mergesweep.zoo import ZOOS, ZooBuilder, digits, ensure_zoo, recipe_hash, zoo_dir, zoo_manifest

TASKS = ("low", "high", "parity", "loop")


def _pool(zoo: Path) -> ModelPool:
    return ModelPool(
        PoolSpec(
            base=str(zoo / "base"),
            experts={t: str(zoo / "experts" / t) for t in TASKS},
            exclude=digits.EXCLUDE,
        )
    )


def _objectives(pool: ModelPool, zoo: Path, split: str) -> dict:
    out = {}
    for t in TASKS:
        obj = build_objective(
            t, {"kind": "accuracy", "data": str(zoo / "data" / t), "split": split}
        )
        obj.setup(pool, seed=0)
        out[t] = obj
    return out


# -- cache folder and recipe hash ----------------------------------------------------------
def test_recipe_hash_is_stable_and_covers_the_recipe(monkeypatch, tmp_path) -> None:
    h = recipe_hash("digits")
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert recipe_hash("digits") == h
    monkeypatch.setenv("MERGESWEEP_CACHE", str(tmp_path))
    assert zoo_dir("digits") == tmp_path / "zoo" / f"digits-{h}"
    changed = json.loads(json.dumps(digits.RECIPE))
    changed["experts"]["steps"] = 301
    monkeypatch.setitem(ZOOS._items, "digits", ZooBuilder("digits", changed, digits.build))
    assert recipe_hash("digits") != h


def test_unknown_zoo_and_unbuilt_manifest(monkeypatch, tmp_path) -> None:
    with pytest.raises(UnknownNameError, match=r"zoo: unknown zoo 'nope'; choose one of digits"):
        ensure_zoo("nope")
    monkeypatch.setenv("MERGESWEEP_CACHE", str(tmp_path))
    with pytest.raises(MissingFileError, match=r"zoo: 'digits' is not built .*zoo build digits"):
        zoo_manifest("digits")


def test_ensure_zoo_builds_once_and_a_failed_build_leaves_nothing(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MERGESWEEP_CACHE", str(tmp_path))
    calls = []

    def good(folder: Path, *, progress: bool, threads: int) -> dict:
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"x")
        return {"tasks": ["a"]}

    def bad(folder: Path, *, progress: bool, threads: int) -> dict:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    monkeypatch.setitem(ZOOS._items, "fake", ZooBuilder("fake", {"v": 1}, good))
    monkeypatch.setitem(ZOOS._items, "broken", ZooBuilder("broken", {"v": 1}, bad))
    folder = ensure_zoo("fake", progress=False)
    assert folder == zoo_dir("fake") and (folder / "weights.bin").is_file()
    assert ensure_zoo("fake", progress=False) == folder and len(calls) == 1
    manifest = zoo_manifest("fake")
    assert manifest["tasks"] == ["a"] and manifest["recipe_hash"] == recipe_hash("fake")
    with pytest.raises(RuntimeError, match="killed mid-build"):
        ensure_zoo("broken", progress=False)
    assert not zoo_dir("broken").exists()
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == [folder.name]


def test_tiny_build_is_deterministic_and_restores_torch_state(monkeypatch, tmp_path) -> None:
    """The whole recipe with 2 training steps: same bytes twice; threads/RNG/flags restored."""
    monkeypatch.setitem(digits.RECIPE["base"], "steps", 2)
    monkeypatch.setitem(digits.RECIPE["experts"], "steps", 2)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    want = torch.rand(3)
    torch.manual_seed(123)
    files = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        fields = digits.build(tmp_path / run, progress=False, threads=1)
        files.append(sorted((tmp_path / run).rglob("*.safetensors")))
    assert torch.equal(torch.rand(3), want)  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    assert len(files[0]) == 5
    for a, b in zip(*files):
        assert a.read_bytes() == b.read_bytes(), a
    assert fields["num_labels"] == {"low": 5, "high": 5, "parity": 2, "loop": 2}


# -- the real zoo --------------------------------------------------------------------------
def test_zoo_files_and_manifest(digits_zoo: Path) -> None:
    from datasets import load_from_disk

    manifest = zoo_manifest("digits")
    assert digits_zoo == zoo_dir("digits")
    assert manifest["recipe_hash"] == recipe_hash("digits")
    assert manifest["tasks"] == list(TASKS)
    assert manifest["num_labels"] == {"low": 5, "high": 5, "parity": 2, "loop": 2}
    assert (digits_zoo / "base" / "model.safetensors").is_file()
    for t in TASKS:
        assert (digits_zoo / "experts" / t / "model.safetensors").is_file()
        assert (digits_zoo / "experts" / t / "config.json").is_file()
    sizes = manifest["sizes"]
    assert sizes["parity"] == sizes["loop"] == {"train": 1200, "validation": 300, "test": 297}
    for split, n in sizes["parity"].items():
        assert sizes["low"][split] + sizes["high"][split] == n
    data = load_from_disk(str(digits_zoo / "data" / "high"))
    assert list(data) == ["train", "validation", "test"]
    test = data["test"].with_format("numpy")[:]
    assert test["pixel_values"].shape == (sizes["high"]["test"], 1, 8, 8)
    assert test["pixel_values"].dtype == np.float32
    assert test["pixel_values"].min() >= 0.0 and test["pixel_values"].max() <= 1.0
    assert set(np.unique(test["label"])) == set(range(5))


def test_experts_are_good_and_match_the_manifest(digits_zoo: Path) -> None:
    pool = _pool(digits_zoo)
    recorded = zoo_manifest("digits")["accuracy"]["experts"]["test"]
    objectives = _objectives(pool, digits_zoo, "test")
    for k, t in enumerate(TASKS):  # λ = one-hot k gives expert k's own encoder
        coeffs = np.eye(len(TASKS))[k]
        build_method("linear").apply(pool, MergePlan.uniform(pool.layout.num_tensors, coeffs))
        acc = objectives[t].evaluate(objectives[t].model(pool))
        assert acc >= 0.75, (t, acc)
        assert acc == pytest.approx(recorded[t], abs=1e-3)


def test_task_arithmetic_has_a_real_optimum(digits_zoo: Path) -> None:
    """λ = 0.3 beats λ = 1.0 on average (what a search must find), as the manifest records."""
    pool = _pool(digits_zoo)
    method = build_method("linear")
    recorded = zoo_manifest("digits")["accuracy"]["task_arithmetic"]
    objectives = _objectives(pool, digits_zoo, "validation")
    means = {}
    for lam in (0.3, 1.0):
        method.apply(pool, MergePlan.uniform(pool.layout.num_tensors, [lam] * len(TASKS)))
        means[lam] = float(np.mean([o.evaluate(o.model(pool)) for o in objectives.values()]))
        assert means[lam] == pytest.approx(recorded[str(lam)]["validation"]["mean"], abs=2e-3)
    assert means[0.3] > means[1.0] + 0.05, means
