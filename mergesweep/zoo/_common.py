"""Shared plumbing of the zoo builds: a quiet, seeded, single-threaded build with one bar."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["build_env", "progress_bar", "scores", "versions"]


@contextlib.contextmanager
def build_env(threads: int) -> Iterator[None]:
    """Torch threads, deterministic algorithms, a forked RNG and no library progress bars for
    the duration of a build; everything is restored afterwards."""
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_bars = ds_logging.is_progress_bar_enabled(), tf_logging.is_progress_bar_enabled()
    prev_verbosity = tf_logging.get_verbosity()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # One bar of our own; the per-file bars and notices of datasets/transformers would drown it.
    ds_logging.disable_progress_bar()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        tf_logging.set_verbosity(prev_verbosity)
        if prev_bars[0]:
            ds_logging.enable_progress_bar()
        if prev_bars[1]:
            tf_logging.enable_progress_bar()


@contextlib.contextmanager
def progress_bar(
    zoo: str, total: int, first: str, *, enabled: bool
) -> Iterator[tuple[Callable[[], None], Callable[[str], None]]]:
    """A rich bar over ``total`` steps; yields ``(advance(), describe(text))``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(f"{zoo} zoo: {{task.description:<18}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        job = bar.add_task(first, total=total)
        yield (lambda: bar.advance(job)), (lambda text: bar.update(job, description=text))


def scores(per_split: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Round ``{split: {task: value}}`` and add each split's task mean."""
    return {
        split: {
            **{t: round(a, 4) for t, a in vals.items()},
            "mean": round(float(np.mean(list(vals.values()))), 4),
        }
        for split, vals in per_split.items()
    }


def versions() -> dict[str, Any]:
    """Library versions a build depends on (recorded in the manifest)."""
    import datasets
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
    }
