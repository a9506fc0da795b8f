"""Pools of real transformers architectures: causal LM with tied embeddings, sequence
classification with per-task heads, half-precision task vectors and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergesweep.merge import PrepareContext, build_method
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool, PoolSpec


def _gpt2(seed: int, dtype: torch.dtype = torch.float32):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_layer=2, n_embd=16, n_head=2, n_positions=16)
    cfg.bos_token_id = cfg.eos_token_id = 0
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def _save_family(root: Path, make, n: int = 2) -> dict[str, str]:
    """Base (seed 0) and ``n`` experts (seeds 1..n), each the base plus seeded noise."""
    base = make(0)
    paths = {"base": str(root / "base")}
    base.save_pretrained(paths["base"])
    for i in range(1, n + 1):
        model = make(i)
        model.load_state_dict(base.state_dict())
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_((0.1 * torch.randn(p.shape, generator=gen)).to(p.dtype))
        paths[f"e{i}"] = str(root / f"e{i}")
        model.save_pretrained(paths[f"e{i}"])
    return paths


def _merge(pool: ModelPool, lambdas: list[float]) -> None:
    method = build_method("task_arithmetic")
    method.prepare(pool, PrepareContext())
    method.apply(pool, MergePlan.uniform(pool.layout.num_tensors, lambdas))


def test_tied_embeddings_are_merged_once_and_stay_tied(tmp_path) -> None:
    from transformers import GPT2LMHeadModel

    paths = _save_family(tmp_path, _gpt2)
    pool = ModelPool(PoolSpec(base=paths["base"], experts={"a": paths["e1"], "b": paths["e2"]}))
    names = pool.layout.names
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names  # one slot
    _merge(pool, [0.3, 0.6])
    experts = {k: GPT2LMHeadModel.from_pretrained(paths[k]) for k in ("base", "e1", "e2")}
    wte = {k: m.transformer.wte.weight.detach() for k, m in experts.items()}
    want = wte["base"] + 0.3 * (wte["e1"] - wte["base"]) + 0.6 * (wte["e2"] - wte["base"])
    for task in ("a", "b"):
        model = pool.model(task)
        assert model.lm_head.weight is model.transformer.wte.weight
        torch.testing.assert_close(model.lm_head.weight.detach(), want, rtol=0, atol=1e-6)
        # The merged embedding is a view of the live buffer: a new merge reaches the head too.
        assert model.lm_head.weight.data_ptr() == pool.flat_view(pool.live, 0).data_ptr()
    _merge(pool, [1.0, 0.0])
    torch.testing.assert_close(pool.model("b").lm_head.weight.detach(), wte["e1"])
    ids = torch.arange(10).view(1, -1)
    with torch.inference_mode():
        torch.testing.assert_close(pool.model("a")(ids).logits, experts["e1"](ids).logits)


@pytest.mark.parametrize("tau_dtype", ["bfloat16", "float16"])
def test_half_precision_task_vectors(tmp_path, tau_dtype) -> None:
    paths = _save_family(tmp_path, _gpt2)
    experts = {"a": paths["e1"], "b": paths["e2"]}
    full = ModelPool(PoolSpec(base=paths["base"], experts=experts))
    half = ModelPool(PoolSpec(base=paths["base"], experts=experts, dtype=tau_dtype))
    assert half.tau.dtype == getattr(torch, tau_dtype) and half.live.dtype == torch.float32
    assert half.tau.element_size() * 2 == full.tau.element_size()
    for pool in (full, half):
        _merge(pool, [0.5, 0.5])
    err = (half.live - full.live).abs().max().item()
    assert 0 < err < 2e-3  # the rounding of τ to 8 (bf16) or 11 (fp16) bits, no more
    assert torch.equal(half.model("a").transformer.wpe.weight, half.flat_view(half.live, 1))


def test_bfloat16_checkpoints_give_a_bfloat16_live_model(tmp_path) -> None:
    paths = _save_family(tmp_path, lambda s: _gpt2(s, torch.bfloat16))
    pool = ModelPool(PoolSpec(base=paths["base"], experts={"a": paths["e1"]}, dtype="bfloat16"))
    assert pool.live.dtype == torch.bfloat16 and pool.tau.dtype == torch.bfloat16
    assert next(pool.model("a").parameters()).dtype == torch.bfloat16
    _merge(pool, [1.0])
    from transformers import GPT2LMHeadModel

    expert = GPT2LMHeadModel.from_pretrained(paths["e1"])
    torch.testing.assert_close(
        pool.model("a").transformer.h[1].mlp.c_fc.weight, expert.transformer.h[1].mlp.c_fc.weight
    )


def test_sequence_classification_keeps_a_head_per_task(tmp_path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    def bert(seed: int, labels: int = 3):
        cfg = BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=16, num_labels=labels,
        )  # fmt: skip
        torch.manual_seed(seed)
        return BertForSequenceClassification(cfg).eval()

    paths = _save_family(tmp_path, bert)
    bert(5, labels=5).save_pretrained(str(tmp_path / "five"))  # another head shape
    five = BertForSequenceClassification.from_pretrained(str(tmp_path / "five"))
    five.bert.load_state_dict(
        BertForSequenceClassification.from_pretrained(paths["e2"]).bert.state_dict()
    )
    five.save_pretrained(str(tmp_path / "five"))
    pool = ModelPool(
        PoolSpec(
            base=paths["base"],
            experts={"a": paths["e1"], "b": str(tmp_path / "five")},
            include=(r"bert\..*",),
        )
    )
    assert all(n.startswith("bert.") for n in pool.layout.names)
    _merge(pool, [0.5, 0.5])
    a, b = pool.model("a"), pool.model("b")
    assert a.classifier.weight.shape == (3, 16) and b.classifier.weight.shape == (5, 16)
    assert a.bert.pooler.dense.weight is not b.bert.pooler.dense.weight
    assert a.bert.pooler.dense.weight.data_ptr() == b.bert.pooler.dense.weight.data_ptr()
    own = BertForSequenceClassification.from_pretrained(paths["e1"]).classifier.weight
    torch.testing.assert_close(a.classifier.weight, own)
