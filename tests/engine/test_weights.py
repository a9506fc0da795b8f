"""Reading weights: file discovery, header-only metadata, torch files without pickle, hashes."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import pytest
import torch
from safetensors.torch import save_file

from mergesweep.errors import MissingFileError, PoolError
from mergesweep.weights import content_hash, read_infos, read_tensors, weight_files

TENSORS = {
    "a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "b.bias": torch.ones(4, dtype=torch.bfloat16),
    "c.half": torch.zeros(2, 2, dtype=torch.float16),
    "ids": torch.arange(5),
}


def test_single_safetensors_file_metadata_and_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(TENSORS, str(path))
    assert weight_files(path, key="k") == [path]
    infos = read_infos(path, key="k")
    assert {n: (i.shape, i.dtype) for n, i in infos.items()} == {
        "a.weight": ((2, 3), "float32"),
        "b.bias": ((4,), "bfloat16"),
        "c.half": ((2, 2), "float16"),
        "ids": ((5,), "int64"),
    }
    assert infos["a.weight"].numel == 6
    got = read_tensors(path, ["a.weight", "b.bias"], key="k")
    assert list(got) == ["a.weight", "b.bias"]
    assert torch.equal(got["a.weight"], TENSORS["a.weight"])
    assert got["b.bias"].dtype == torch.bfloat16


def test_sharded_folder_reads_every_shard(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {
        "metadata": {},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [f.name for f in weight_files(tmp_path, key="k")] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert set(read_tensors(tmp_path, key="k")) == {"a", "b"}
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"k: shard .*model-00002-of-00002.* is missing"):
        weight_files(tmp_path, key="k")


def test_sharded_torch_folder(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.ones(3)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = {
        "weight_map": {
            "a": "pytorch_model-00001-of-00002.bin",
            "b": "pytorch_model-00002-of-00002.bin",
        }
    }
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert {n: i.shape for n, i in read_infos(tmp_path, key="k").items()} == {
        "a": (2,),
        "b": (3,),
    }


def test_torch_file_loads_without_pickle(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"w": torch.full((2,), 3.0)}}, path)
    assert torch.equal(read_tensors(path, key="k")["w"], torch.full((2,), 3.0))
    assert read_infos(path, key="k")["w"].dtype == "float32"


def test_pickled_object_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": Fraction(1, 3)}, path)
    with pytest.raises(
        PoolError,
        match=r"pool.base: .*ckpt.pth. holds pickled objects \(fractions.Fraction\) .*trust_pickle",
    ):
        read_tensors(path, key="pool.base")
    assert torch.equal(read_tensors(path, key="pool.base", trust_pickle=True)["w"], torch.ones(2))


def test_torch_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.ones(2)], path)
    with pytest.raises(PoolError, match=r"k: .*list.pt' does not hold a state dict of tensors"):
        read_infos(path, key="k")


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(MissingFileError, match=r"pool.base: no such file or folder .*nope"):
        weight_files(tmp_path / "nope", key="pool.base")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(PoolError, match=r"k: .*notes.txt' is neither .safetensors nor a torch"):
        weight_files(tmp_path / "notes.txt", key="k")
    with pytest.raises(MissingFileError, match=r"k: folder .* holds no weights"):
        weight_files(tmp_path, key="k")


def test_corrupt_safetensors_names_the_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(PoolError, match=r"k: cannot read .*bad.safetensors"):
        read_infos(path, key="k")


def test_content_hash_follows_content_not_path(tmp_path):
    a = tmp_path / "a" / "w.safetensors"
    a.parent.mkdir()
    save_file(TENSORS, str(a))
    first = content_hash(a, key="k")
    assert content_hash(a, key="k") == first
    moved = tmp_path / "b"
    shutil.copytree(a.parent, moved)
    assert content_hash(moved / "w.safetensors", key="k") == first
    changed = dict(TENSORS, **{"a.weight": TENSORS["a.weight"] + 1})
    save_file(changed, str(a))
    assert content_hash(a, key="k") != first
