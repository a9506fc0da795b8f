"""A ViT-shaped pool layout (6 layers, 4 experts), built directly: spaces read metadata only."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mergesweep.pool import PoolLayout

EXPERTS = ("mnist", "svhn", "cars", "dtd")
NUM_LAYERS = 6
EMBED = (
    "vit.embeddings.cls_token",
    "vit.embeddings.position_embeddings",
    "vit.embeddings.patch_embeddings.projection.weight",
    "vit.embeddings.patch_embeddings.projection.bias",
)
ATTENTION = tuple(f"attention.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias"))
NORMS = ("layernorm_before.weight", "layernorm_before.bias")
NORMS_AFTER = ("layernorm_after.weight", "layernorm_after.bias")
MLP = ("mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")
PER_LAYER = (*ATTENTION, *NORMS, *NORMS_AFTER, *MLP)  # 16 tensors, the transformers 5 order
FINAL = ("vit.layernorm.weight", "vit.layernorm.bias")
NAMES = (
    *EMBED,
    *(f"vit.layers.{i}.{s}" for i in range(NUM_LAYERS) for s in PER_LAYER),
    *FINAL,
)
NUM_TENSORS = len(NAMES)  # 4 + 6·16 + 2 = 102


def make_layout(names: tuple[str, ...] = NAMES, experts: tuple[str, ...] = EXPERTS) -> PoolLayout:
    return PoolLayout(experts=experts, names=names, shapes=((4,),) * len(names), fingerprint="fp")


@pytest.fixture
def layout() -> PoolLayout:
    """102 tensors: 4 embeddings, 6 layers of 16 (attention, norms, MLP), 2 final norms."""
    return make_layout()


@pytest.fixture
def layout_of() -> Callable[..., PoolLayout]:
    """Build another layout: ``layout_of(names=..., experts=...)``."""
    return make_layout
