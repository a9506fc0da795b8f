"""Tiny data and models for objective tests.

* ``logit_data``: a ``save_to_disk`` DatasetDict whose ``pixel_values`` *are* the logits of
  :class:`Passthrough`, so every metric can be computed by hand from ``ROWS``.
* ``text_pool``: a 1-layer BERT base and expert saved with a tiny word-level tokenizer.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (logits, label): argmax is right on rows 0, 1, 4; row 3 ties (argmax takes the first).
ROWS = [
    ([2.0, 0.0, 0.0], 0),
    ([0.0, 1.0, 0.0], 1),
    ([0.0, 0.0, 3.0], 0),
    ([1.0, 1.0, 1.0], 2),
    ([0.0, 2.0, 1.0], 1),
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "very", "not"]


class Passthrough(nn.Module):
    """Returns its input as logits (times a learnable scale of 1, so it has a parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, pixel_values: torch.Tensor) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=pixel_values * self.scale)


def save_rows(path: Path, splits: dict[str, list[tuple[list[float], int]]]) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            name: Dataset.from_dict(
                {
                    "pixel_values": np.array([r[0] for r in rows], dtype=np.float32).reshape(
                        len(rows), 3
                    ),
                    "label": [r[1] for r in rows],
                }
            )
            for name, rows in splits.items()
        }
    ).save_to_disk(str(path))
    return path


def random_rows(n: int, seed: int) -> list[tuple[list[float], int]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=3).round(3).tolist(), int(rng.integers(3))) for _ in range(n)]


@pytest.fixture
def rows() -> list[tuple[list[float], int]]:
    """The validation rows of ``logit_data``: (logits, label)."""
    return ROWS


@pytest.fixture
def make_rows():
    """``make_rows(n, seed)``: random (logits, label) rows; ``logit_data`` uses seeds 1 and 2."""
    return random_rows


@pytest.fixture
def write_rows():
    """``write_rows(path, {split: rows})`` saves a DatasetDict of rows."""
    return save_rows


@pytest.fixture
def vocab() -> list[str]:
    return VOCAB


@pytest.fixture
def logit_data(tmp_path: Path) -> Path:
    """validation = ROWS; train = 50 random rows; test = 20 random rows."""
    return save_rows(
        tmp_path / "logits",
        {"train": random_rows(50, 1), "validation": ROWS, "test": random_rows(20, 2)},
    )


@pytest.fixture
def passthrough() -> Passthrough:
    return Passthrough()


@pytest.fixture
def callable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module ``objective_fns`` of user functions for the callable objective."""
    (tmp_path / "objective_fns.py").write_text(
        textwrap.dedent(
            """
            import torch

            def scale(model, task):
                return float(model.scale.detach()) * 2

            def report(model, task):
                return {"f1": 0.25, "task_len": float(len(task))}

            def broken(model, task):
                return "not a number"

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "objective_fns"


@pytest.fixture
def text_pool(tmp_path: Path):
    """A tiny BERT pool: tokenizer saved in the base folder only (the expert falls back)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from mergesweep.pool import ModelPool, PoolSpec

    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    base = BertForSequenceClassification(config)
    base.save_pretrained(str(tmp_path / "base"))
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(str(tmp_path / "base"))
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(str(tmp_path / "expert"))
    return ModelPool(PoolSpec(base=str(tmp_path / "base"), experts={"t": str(tmp_path / "expert")}))
