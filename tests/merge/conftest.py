"""Tiny pools built on the fly for merge-method tests.

* :func:`file_pool`: random tensors saved as ``.safetensors`` files (``TensorModule`` models):
  embeddings, three layers, a final norm (merged) and a per-task head (kept).
* :func:`bert_pool`: a 1-layer ``BertForSequenceClassification`` (3 labels) base and experts
  saved with ``save_pretrained``; each expert is the base plus noise with its own head.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergesweep.merge import PrepareContext
from mergesweep.plan import MergePlan
from mergesweep.pool import ModelPool, PoolSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {
    "embed.weight": (7, 4),
    "layers.0.attn.weight": (4, 4),
    "layers.0.attn.bias": (4,),
    "layers.1.attn.weight": (4, 4),
    "layers.1.mlp.weight": (6, 4),
    "layers.2.mlp.weight": (3, 2, 4),
    "norm.weight": (4,),
    "head.weight": (2, 4),
}


def write_file_pool(root: Path, n_experts: int, *, seed: int = 0) -> PoolSpec:
    """Base and ``n_experts`` experts as safetensors files; every tensor but the head merges."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    save_file(base, str(root / "base.safetensors"))
    experts = {}
    for k in range(n_experts):
        # varied scales per expert, so magnitudes and signs genuinely conflict
        scale = 0.05 * (1 + k)
        sd = {n: t + scale * torch.randn(t.shape, generator=g) for n, t in base.items()}
        path = root / f"e{k}.safetensors"
        save_file(sd, str(path))
        experts[f"t{k}"] = str(path)
    return PoolSpec(base=str(root / "base.safetensors"), experts=experts, exclude=(r"head\..*",))


def bert_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )


def write_bert_pool(root: Path, n_experts: int, *, seed: int = 0) -> PoolSpec:
    """A tiny BERT classifier base and experts saved with ``save_pretrained``."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    base = BertForSequenceClassification(bert_config()).eval()
    base.save_pretrained(root / "base")
    experts = {}
    for k in range(n_experts):
        expert = BertForSequenceClassification(bert_config()).eval()  # its own head
        with torch.no_grad():
            for (n, p), q in zip(expert.named_parameters(), base.parameters()):
                if n.startswith("bert."):
                    p.copy_(q + 0.05 * torch.randn_like(q))
        expert.save_pretrained(root / f"e{k}")
        experts[f"t{k}"] = str(root / f"e{k}")
    return PoolSpec(base=str(root / "base"), experts=experts, include=(r"bert\..*",))


def bert_batches(n: int = 6, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Two synthetic batches of token ids (no labels)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, 5), generator=g)
    mask = torch.ones_like(ids)
    half = n // 2
    return [
        {"input_ids": ids[:half], "attention_mask": mask[:half]},
        {"input_ids": ids[half:], "attention_mask": mask[half:]},
    ]


def bert_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a CPU batch on the model's device (as objectives move their batches)."""
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).logits


def bert_context(pool: ModelPool, seed: int = 0) -> PrepareContext:
    """Data for every task of a BERT pool (what objectives give Fisher)."""
    return PrepareContext(
        seed=seed,
        batches={t: bert_batches for t in pool.experts},
        logits={t: bert_logits for t in pool.experts},
    )


def random_plan(pool: ModelPool, seed: int = 0, *, densities: bool = False) -> MergePlan:
    """Per-tensor, per-expert coefficients in [0.1, 1.2] (and densities in [0.1, 0.9])."""
    rng = np.random.default_rng(seed)
    shape = (pool.layout.num_tensors, pool.layout.num_experts)
    dens = rng.uniform(0.1, 0.9, shape) if densities else None
    return MergePlan(rng.uniform(0.1, 1.2, shape), dens)


@pytest.fixture(scope="session")
def bert_dirs(tmp_path_factory) -> Callable[[int], PoolSpec]:
    """``bert_dirs(n)``: the spec of a saved BERT pool with ``n`` experts (built once per n)."""
    made: dict[int, PoolSpec] = {}

    def get(n: int) -> PoolSpec:
        if n not in made:
            made[n] = write_bert_pool(tmp_path_factory.mktemp(f"bert{n}"), n)
        return made[n]

    return get


@pytest.fixture
def bert_pool(bert_dirs) -> Callable[[int], ModelPool]:
    """``bert_pool(n)``: a freshly loaded BERT pool with ``n`` experts (methods may rewrite τ)."""
    return lambda n: ModelPool(bert_dirs(n))


@pytest.fixture
def file_pool(tmp_path) -> Callable[..., ModelPool]:
    """``file_pool(n, seed=0)``: a fresh pool of ``n`` experts over safetensors files."""

    def make(n: int, seed: int = 0) -> ModelPool:
        return ModelPool(write_file_pool(tmp_path / f"pool{n}-{seed}", n, seed=seed))

    return make


@pytest.fixture
def context() -> Callable[..., PrepareContext]:
    """``context(pool, seed=0)``: prepare data for every task of a BERT pool."""
    return bert_context


@pytest.fixture
def plan() -> Callable[..., MergePlan]:
    """``plan(pool, seed=0, densities=False)``: a random per-tensor plan."""
    return random_plan


def read_weights(pool: ModelPool) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """θ₀ and every θₖ of a file pool's merged tensors, read from its files (float64)."""
    from safetensors.torch import load_file

    def load(path: str) -> dict[str, np.ndarray]:
        sd = load_file(path)
        return {n: sd[n].double().numpy() for n in pool.layout.names}

    return load(pool.spec.base), [load(p) for p in pool.spec.experts.values()]


@pytest.fixture
def weights() -> Callable[[ModelPool], tuple[dict, list[dict]]]:
    """``weights(pool)``: ``(θ₀, [θₖ])`` by tensor name, read straight from the pool's files."""
    return read_weights
