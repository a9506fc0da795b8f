"""The model pool: loading every supported format, task vectors, shared live weights, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification

from mergesweep.errors import ConfigError, MissingFileError, PoolError
from mergesweep.pool import ModelPool, PoolSpec, TensorModule, read_layout

BERT = r"bert\..*"


def save_bert(path: Path, seed: int, *, dtype=None, shard: str | None = None) -> Path:
    """A 1-layer BERT classifier (3 labels); ``seed`` sets every weight, head included."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def hf_weights(path: Path) -> dict[str, torch.Tensor]:
    return BertForSequenceClassification.from_pretrained(path).state_dict()


def save_files(root: Path, suffix: str = ".safetensors", dtype=torch.float32) -> PoolSpec:
    """Base and two experts as single weight files: ``enc.*`` merged, ``head`` per task."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    paths = {}
    for name in ("base", "a", "b"):
        sd = {
            "enc.0.weight": torch.randn(3, 4, generator=g).to(dtype),
            "enc.1.weight": torch.randn(5, generator=g).to(dtype),
            "head": torch.randn(2, 3, generator=g).to(dtype),
        }
        path = root / f"{name}{suffix}"
        if suffix == ".safetensors":
            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        paths[name] = str(path)
    return PoolSpec(
        base=paths["base"], experts={"a": paths["a"], "b": paths["b"]}, include=(r"enc\..*",)
    )


@pytest.fixture(scope="module")
def bert_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("berts")
    return {
        "base": save_bert(root / "base", 0),
        "a": save_bert(root / "a", 1),
        "b": save_bert(root / "b", 2),
        "sharded_a": save_bert(root / "sharded_a", 1, shard="2KB"),
        "bf16": save_bert(root / "bf16", 3, dtype=torch.bfloat16),
    }


def bert_spec(folders, **kw) -> PoolSpec:
    experts = kw.pop("experts", {"a": str(folders["a"]), "b": str(folders["b"])})
    return PoolSpec(base=str(folders["base"]), experts=experts, include=(BERT,), **kw)


def test_hf_folders_task_vectors_and_heads(bert_folders):
    pool = ModelPool(bert_spec(bert_folders))
    base, experts = hf_weights(bert_folders["base"]), [hf_weights(bert_folders[t]) for t in "ab"]
    assert pool.layout.names == tuple(n for n in base if n.startswith("bert."))
    assert pool.layout.num_params == sum(base[n].numel() for n in pool.layout.names)
    for k, theta in enumerate(experts):
        for i, n in enumerate(pool.layout.names):
            assert torch.equal(pool.flat_view(pool.tau[k], i), theta[n] - base[n])
        assert torch.equal(pool.model("ab"[k]).classifier.weight, theta["classifier.weight"])
    assert torch.equal(pool.live, pool.base)


def test_task_models_share_the_live_weights(bert_folders):
    pool = ModelPool(bert_spec(bert_folders))
    for task in ("a", "b"):
        state = pool.model(task).state_dict()
        for i, n in enumerate(pool.layout.names):
            assert state[n].data_ptr() == pool.flat_view(pool.live, i).data_ptr()
    # Writing θ_b into the live buffer turns task b's model into expert b, end to end.
    pool.live.copy_(pool.base + pool.tau[1])
    reference = BertForSequenceClassification.from_pretrained(bert_folders["b"]).eval()
    batch = {"input_ids": torch.tensor([[1, 5, 7, 2]]), "attention_mask": torch.ones(1, 4)}
    with torch.no_grad():
        got, want = pool.model("b")(**batch).logits, reference(**batch).logits
        other = pool.model("a")(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(other, want)  # same merged body, task a's own head
    state = pool.expert_state(1)
    assert torch.allclose(
        state["bert.pooler.dense.weight"], hf_weights(bert_folders["b"])["bert.pooler.dense.weight"]
    )


def test_sharded_folder_loads_like_a_single_file(bert_folders):
    assert len(list(bert_folders["sharded_a"].glob("*.safetensors"))) > 1
    single = ModelPool(bert_spec(bert_folders))
    sharded = ModelPool(bert_spec(bert_folders, experts={"a": str(bert_folders["sharded_a"])}))
    assert sharded.layout.names == single.layout.names
    assert torch.equal(sharded.tau[0], single.tau[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_task_vectors_in_the_chosen_dtype(tmp_path, dtype):
    spec = save_files(tmp_path)
    pool = ModelPool(PoolSpec(spec.base, spec.experts, include=spec.include, dtype=dtype))
    assert pool.tau.dtype == getattr(torch, dtype)
    assert pool.base.dtype == pool.live.dtype == torch.float32
    base = load_file(spec.base)
    for k, path in enumerate(spec.experts.values()):
        theta = load_file(path)
        for i, n in enumerate(pool.layout.names):
            want = (theta[n] - base[n]).to(getattr(torch, dtype))
            assert torch.equal(pool.flat_view(pool.tau[k], i), want)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_single_weight_files_give_tensor_modules(tmp_path, suffix):
    spec = save_files(tmp_path, suffix)
    pool = ModelPool(spec)
    assert pool.layout.names == ("enc.0.weight", "enc.1.weight")
    model = pool.model("a")
    assert isinstance(model, TensorModule)
    assert model.tensor("enc.0.weight").data_ptr() == pool.flat_view(pool.live, 0).data_ptr()
    own = torch.load(spec.experts["a"]) if suffix == ".pt" else load_file(spec.experts["a"])
    assert torch.equal(model.tensor("head"), own["head"])
    assert not torch.equal(pool.model("b").tensor("head"), own["head"])


def test_bf16_weights_keep_their_dtype(tmp_path):
    spec = save_files(tmp_path, dtype=torch.bfloat16)
    pool = ModelPool(spec)
    assert pool.base.dtype == pool.live.dtype == torch.bfloat16
    assert pool.model("a").tensor("enc.0.weight").dtype == torch.bfloat16


def test_include_and_exclude_select_the_merged_tensors(bert_folders):
    spec = PoolSpec(
        base=str(bert_folders["base"]),
        experts={"a": str(bert_folders["a"])},
        include=(r"bert\.encoder\..*", r"bert\.pooler\..*"),
        exclude=(r".*LayerNorm.*", r".*\.bias"),
    )
    names = read_layout(spec).names
    assert names and all(n.startswith(("bert.encoder.", "bert.pooler.")) for n in names)
    assert not any("LayerNorm" in n or n.endswith(".bias") for n in names)
    assert "bert.pooler.dense.weight" in names
    # Without include every floating tensor is merged, heads included.
    everything = read_layout(PoolSpec(str(bert_folders["base"]), {"a": str(bert_folders["a"])}))
    assert "classifier.weight" in everything.names


def test_fingerprint_is_stable_and_follows_the_files(tmp_path):
    spec = save_files(tmp_path)
    first = read_layout(spec).fingerprint
    assert read_layout(spec).fingerprint == first
    assert ModelPool(spec).layout.fingerprint == first
    assert (
        read_layout(
            PoolSpec(spec.base, spec.experts, include=spec.include, dtype="bfloat16")
        ).fingerprint
        != first
    )
    assert read_layout(PoolSpec(spec.base, spec.experts)).fingerprint != first  # selection
    sd = load_file(spec.experts["b"])
    sd["enc.1.weight"] = sd["enc.1.weight"] + 1e-3
    save_file(sd, spec.experts["b"])
    assert read_layout(spec).fingerprint != first


# -- bad input ---------------------------------------------------------------------------------


def _save(path: Path, **tensors) -> str:
    save_file(tensors, str(path))
    return str(path)


def test_missing_file(tmp_path):
    spec = PoolSpec(str(tmp_path / "nope.safetensors"), {"a": str(tmp_path / "nope.safetensors")})
    with pytest.raises(MissingFileError, match=r"pool.base: no such file or folder .*nope"):
        read_layout(spec)


def test_folder_without_weights(tmp_path):
    base = _save(tmp_path / "b.safetensors", w=torch.zeros(2))
    (tmp_path / "empty").mkdir()
    spec = PoolSpec(base, {"a": str(tmp_path / "empty")})
    with pytest.raises(
        MissingFileError, match=r"pool.experts.a: folder .*empty.* holds no weights"
    ):
        read_layout(spec)


def test_mismatched_shape_names_tensor_and_file(tmp_path):
    base = _save(tmp_path / "b.safetensors", w=torch.zeros(2, 3))
    expert = _save(tmp_path / "e.safetensors", w=torch.zeros(3, 2))
    with pytest.raises(
        PoolError, match=r"pool.experts.x: tensor 'w' has shape \[3, 2\] in '.*e.safetensors' but"
    ):
        read_layout(PoolSpec(base, {"x": expert}))


def test_missing_tensor_in_an_expert(tmp_path):
    base = _save(tmp_path / "b.safetensors", w=torch.zeros(2), v=torch.zeros(1))
    expert = _save(tmp_path / "e.safetensors", w=torch.zeros(2))
    with pytest.raises(PoolError, match=r"pool.experts.x: tensor 'v' of the base is missing in"):
        read_layout(PoolSpec(base, {"x": expert}))


def test_dtype_mismatch(tmp_path):
    base = _save(tmp_path / "b.safetensors", w=torch.zeros(2))
    expert = _save(tmp_path / "e.safetensors", w=torch.zeros(2, dtype=torch.float16))
    with pytest.raises(PoolError, match=r"pool.experts.x: tensor 'w' has dtype float16 in '.*e."):
        read_layout(PoolSpec(base, {"x": expert}))


def test_dtype_mismatch_between_hf_folders_names_the_folder(bert_folders):
    spec = bert_spec(bert_folders, experts={"half": str(bert_folders["bf16"])})
    with pytest.raises(
        PoolError, match=r"pool.experts.half: tensor '.*' has dtype bfloat16 in .*bf16"
    ):
        read_layout(spec)


def test_include_selecting_nothing(tmp_path):
    base = _save(tmp_path / "b.safetensors", w=torch.zeros(2))
    with pytest.raises(PoolError, match=r"pool.include\[0\]: pattern 'decoder\\..\*' selects no"):
        read_layout(PoolSpec(base, {"x": base}, include=(r"decoder\..*",)))


def test_exclude_leaving_nothing(tmp_path):
    base = _save(tmp_path / "b.safetensors", w=torch.zeros(2))
    with pytest.raises(PoolError, match="the selection leaves no tensor to merge"):
        read_layout(PoolSpec(base, {"x": base}, exclude=(".*",)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dtype": "float8"}, r"pool.dtype: unknown dtype 'float8'; choose one of float32"),
        ({"experts": {}}, "pool.experts: at least one expert is needed"),
        ({"include": ("(",)}, r"pool.include/exclude\[0\]: bad regex '\('"),
    ],
)
def test_bad_spec(kw, match):
    with pytest.raises(ConfigError, match=match):
        PoolSpec(**{"base": "b", "experts": {"a": "a"}, **kw})


def test_cuda_pool_without_a_gpu_is_refused_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tests/merge/test_cuda.py loads CUDA pools")
    base = _save(tmp_path / "b.safetensors", w=torch.zeros(2))
    with pytest.raises(ConfigError, match=r"^pool.device: 'cuda' but this process sees no CUDA"):
        ModelPool(PoolSpec(base, {"x": base}, device="cuda"))
    with pytest.raises(ConfigError, match=r"^pool.device: 'gpu' is not a device"):
        ModelPool(PoolSpec(base, {"x": base}, device="gpu"))
