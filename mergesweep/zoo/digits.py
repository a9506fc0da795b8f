"""The ``digits`` zoo: a tiny ViT on scikit-learn's bundled 8×8 digits, four experts.

Recipe (every number below is in :data:`RECIPE`, hashed into the zoo's folder name):

* data: the 1,797 images shuffled with seed 0, split 1,200 train / 300 validation / 297 test,
  pixels / 16, shape ``(1, 8, 8)``;
* base: ``ViTForImageClassification`` (~100k parameters) pre-trained self-supervised to tell
  which rotation ``rot90(k·90°)`` was applied to a train image (4 labels);
* experts: the base with a new head per task, the whole model fine-tuned on that task's train
  images: ``low`` (digits 0–4, only those images), ``high`` (digits 5–9 → 0–4, only those),
  ``parity`` (even/odd) and ``loop`` (0/6/8/9 have a loop).

Task arithmetic over the encoder (everything but ``classifier.*``) has a real optimum: it rises
from the base encoder with the expert heads (λ = 0) to a peak near λ = 0.3 and falls by λ = 1.
The build also measures those figures and stores them in ``zoo.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EXCLUDE", "RECIPE", "TASKS", "build", "load_splits"]

TASKS = ("low", "high", "parity", "loop")
EXCLUDE = (r"classifier\..*",)  # per-task heads; the encoder is merged
LAMBDAS = (0.3, 0.5, 1.0)
_SPLITS = ("train", "validation", "test")
_LOOPS = (0, 6, 8, 9)

RECIPE: dict[str, Any] = {
    "version": 1,
    "data": {
        "source": "sklearn.datasets.load_digits",
        "shuffle_seed": 0,
        "split": [1200, 300, 297],
    },
    "vit": {
        "image_size": 8,
        "patch_size": 2,
        "num_channels": 1,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    },
    "base": {
        "task": "rot90",
        "optimizer": "AdamW(fused, weight_decay=0.01)",
        "lr": 2e-3,
        "batch": 64,
        "steps": 1500,
    },
    "experts": {
        "optimizer": "AdamW(fused, weight_decay=0.01)",
        "lr": 5e-4,
        "batch": 64,
        "steps": 300,
    },
    "tasks": {
        "low": "digits 0-4 -> 0..4 (images of 0-4 only)",
        "high": "digits 5-9 -> 0..4 (images of 5-9 only)",
        "parity": "even 0 / odd 1 (all images)",
        "loop": "0/6/8/9 -> 1 else 0 (all images)",
    },
    "seed": 0,
}


def _task(task: str, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of images the task uses, their labels)."""
    if task == "low":
        mask = digits <= 4
        return mask, digits[mask]
    if task == "high":
        mask = digits >= 5
        return mask, digits[mask] - 5
    mask = np.ones_like(digits, dtype=bool)
    if task == "parity":
        return mask, digits % 2
    if task == "loop":
        return mask, np.isin(digits, _LOOPS).astype(np.int64)
    raise KeyError(task)


LABEL_NAMES = {
    "low": ["0", "1", "2", "3", "4"],
    "high": ["5", "6", "7", "8", "9"],
    "parity": ["even", "odd"],
    "loop": ["no loop", "loop"],
}


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The shuffled digits split into train/validation/test: ``(images (n,1,8,8), digits)``."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = (raw.images.astype(np.float32) / 16.0)[:, None]
    digits = raw.target.astype(np.int64)
    order = np.random.default_rng(RECIPE["data"]["shuffle_seed"]).permutation(len(digits))
    out, start = {}, 0
    for split, n in zip(_SPLITS, RECIPE["data"]["split"]):
        idx = order[start : start + n]
        out[split] = (images[idx], digits[idx])
        start += n
    return out


def _config(num_labels: int, names: list[str]):
    from transformers import ViTConfig

    return ViTConfig(
        **RECIPE["vit"],
        num_labels=num_labels,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


def _opts(stage: dict[str, Any]) -> dict[str, Any]:
    return {"lr": stage["lr"], "steps": stage["steps"], "batch": stage["batch"]}


def _train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    batch: int,
    gen: torch.Generator,
    advance: Callable[[], None],
) -> None:
    """AdamW on shuffled epochs of (x, y), ``steps`` minibatches of ``batch``.

    The fused AdamW is ~5x cheaper per step than the default on CPU for this tiny model (and
    its rounding is part of the recipe: the measured figures come from it).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    model.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(len(y), generator=gen)])
        idx, order = order[:batch], order[batch:]
        loss = F.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        advance()
    model.eval()


@torch.inference_mode()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = model(pixel_values=x).logits.argmax(-1)
    return float((pred == y).float().mean())


def _save_data(folder: Path, task: str, splits: dict) -> dict[str, int]:
    from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features

    features = Features(
        {
            "pixel_values": Array3D(shape=(1, 8, 8), dtype="float32"),
            "label": ClassLabel(names=LABEL_NAMES[task]),
        }
    )
    parts, sizes = {}, {}
    for split, (x, y) in splits.items():
        parts[split] = Dataset.from_dict({"pixel_values": x, "label": y}, features=features)
        sizes[split] = len(y)
    DatasetDict(parts).save_to_disk(str(folder / "data" / task))
    return sizes


def _scores(per_split: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Round and add the task mean to ``{split: {task: acc}}``."""
    return {
        split: {
            **{t: round(a, 4) for t, a in accs.items()},
            "mean": round(float(np.mean(list(accs.values()))), 4),
        }
        for split, accs in per_split.items()
    }


def build(folder: Path, *, progress: bool = True, threads: int = 1) -> dict[str, Any]:
    """Train and save the digits zoo into ``folder``; returns the manifest fields.

    Deterministic for a given torch build and thread count: seeded RNGs (the caller's RNG
    state is restored), deterministic algorithms on, ``torch.set_num_threads(threads)`` for the
    build only.
    """
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_bars = ds_logging.is_progress_bar_enabled(), tf_logging.is_progress_bar_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # One bar of our own; the per-file save bars of datasets/transformers would drown it.
    ds_logging.disable_progress_bar()
    tf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            return _build(folder, progress=progress)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        if prev_bars[0]:
            ds_logging.enable_progress_bar()
        if prev_bars[1]:
            tf_logging.enable_progress_bar()


def _build(folder: Path, *, progress: bool) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import ViTForImageClassification

    seed, base_r, exp_r = RECIPE["seed"], RECIPE["base"], RECIPE["experts"]
    splits = load_splits()
    tensors = {s: (torch.from_numpy(x), torch.from_numpy(d)) for s, (x, d) in splits.items()}
    total = base_r["steps"] + len(TASKS) * exp_r["steps"]
    columns = (
        TextColumn("digits zoo: {task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    timings: dict[str, float] = {}
    with Progress(*columns, disable=not progress, transient=False) as bar:
        job = bar.add_task("base (rot90)", total=total)

        def advance() -> None:
            bar.advance(job)

        # Base: which of the 4 rotations was applied, over every (train image, k) pair.
        start = time.perf_counter()
        x_train = tensors["train"][0]
        x_rot = torch.cat([torch.rot90(x_train, k, dims=(2, 3)) for k in range(4)])
        y_rot = torch.arange(4).repeat_interleave(len(x_train))
        torch.manual_seed(seed)
        base = ViTForImageClassification(_config(4, ["rot0", "rot90", "rot180", "rot270"]))
        gen = torch.Generator().manual_seed(seed)
        _train(base, x_rot, y_rot, **_opts(base_r), gen=gen, advance=advance)
        base.save_pretrained(str(folder / "base"))
        base_state = {n: t.detach().clone() for n, t in base.state_dict().items()}
        encoder = [n for n in base_state if not n.startswith("classifier.")]
        timings["base_seconds"] = round(time.perf_counter() - start, 1)

        experts, data, sizes, num_labels = {}, {}, {}, {}
        start = time.perf_counter()
        for i, task in enumerate(TASKS):
            bar.update(job, description=f"expert {task}")
            task_splits = {}
            for s, (x, d) in splits.items():
                mask, labels = _task(task, d)
                task_splits[s] = (x[mask], labels.astype(np.int64))
            sizes[task] = _save_data(folder, task, task_splits)
            data[task] = {
                s: (torch.from_numpy(x), torch.from_numpy(y)) for s, (x, y) in task_splits.items()
            }
            num_labels[task] = len(LABEL_NAMES[task])
            torch.manual_seed(seed + 1 + i)
            model = ViTForImageClassification(_config(num_labels[task], LABEL_NAMES[task]))
            model.load_state_dict({n: base_state[n] for n in encoder}, strict=False)
            gen = torch.Generator().manual_seed(seed + 1 + i)
            x, y = data[task]["train"]
            _train(model, x, y, **_opts(exp_r), gen=gen, advance=advance)
            model.save_pretrained(str(folder / "experts" / task))
            experts[task] = model
        timings["experts_seconds"] = round(time.perf_counter() - start, 1)

    accuracy = _measure(experts, base_state, encoder, data)
    import datasets
    import transformers

    return {
        "tasks": list(TASKS),
        "num_labels": num_labels,
        "label_names": {t: LABEL_NAMES[t] for t in TASKS},
        "pool": {
            "base": "base",
            "experts": {t: f"experts/{t}" for t in TASKS},
            "exclude": list(EXCLUDE),
        },
        "data": {t: f"data/{t}" for t in TASKS},
        "sizes": sizes,
        "params": sum(t.numel() for n, t in base_state.items() if n in encoder),
        "accuracy": accuracy,
        **timings,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
        },
    }


def _measure(
    experts: dict[str, torch.nn.Module],
    base_state: dict[str, torch.Tensor],
    encoder: list[str],
    data: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]],
) -> dict[str, Any]:
    """Accuracies of the experts, of the base encoder with the expert heads (task arithmetic
    at λ = 0) and of task arithmetic θ₀ + λ Σₖ τₖ over the encoder, on validation and test."""
    states = {
        t: {n: m.state_dict()[n].detach().clone() for n in encoder} for t, m in experts.items()
    }
    tau_sum = {n: sum(states[t][n] - base_state[n] for t in TASKS) for n in encoder}

    def evaluate() -> dict[str, dict[str, float]]:
        return _scores(
            {
                s: {t: _accuracy(experts[t], *data[t][s]) for t in TASKS}
                for s in ("validation", "test")
            }
        )

    out: dict[str, Any] = {"experts": evaluate()}
    merged: dict[str, Any] = {}
    for lam in (0.0, *LAMBDAS):
        for t in TASKS:
            experts[t].load_state_dict(
                {n: base_state[n] + lam * tau_sum[n] for n in encoder}, strict=False
            )
        merged[str(lam)] = evaluate()
    for t in TASKS:  # leave the experts as trained
        experts[t].load_state_dict(states[t], strict=False)
    out["base_heads"] = merged.pop("0.0")
    out["task_arithmetic"] = merged
    return out
