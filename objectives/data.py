"""Evaluation data for objectives: ``datasets`` splits, fixed subsets, resident tensor batches.

:class:`DataObjective` is the shared base of the data-driven objectives (accuracy,
cross-entropy, entropy): it takes the data options, loads the split once in :meth:`setup` as
ready-made tensor batches, and implements :meth:`batches` and :meth:`logits`. A subclass only
says how a batch's logits (and labels) add to its metric.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mergesweep.errors import ConfigError, MissingFileError, ObjectiveError
from mergesweep.objectives.base import Objective, prefix_size
from mergesweep.pool import ModelPool

__all__ = ["DataObjective", "load_split", "output_logits", "subset_indices"]

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_FILE_BUILDERS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


def load_split(path: str | Path, split: str, *, key: str):
    """One split of a ``save_to_disk`` folder, or a whole csv/json/jsonl/parquet file.

    A folder holding a ``DatasetDict`` gives the named split; a folder holding one ``Dataset``
    and a single file are one split each and are returned whole, whatever ``split`` says.

    Args:
        path: the data folder or file.
        split: split name for ``DatasetDict`` folders.
        key: the config key of the path, e.g. ``objectives.tasks.low.data``.
    """
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError(f"{key}: no such file or folder '{p}'")
    split_key = f"{key.rsplit('.', 1)[0]}.split"
    if p.is_dir():
        folder = p
        index = p / "dataset_dict.json"
        if index.is_file():  # a DatasetDict: load only the split asked for
            splits = json.loads(index.read_text()).get("splits", [])
            if split not in splits:
                raise ObjectiveError(
                    f"{split_key}: no split '{split}' in '{p}'; available: {', '.join(splits)}"
                )
            folder = p / split
        if _saved_empty(folder):  # datasets cannot even load a saved empty split
            raise ObjectiveError(f"{key}: split '{split}' of '{p}' is empty")
        try:
            data = datasets.load_from_disk(str(folder))
        except Exception as exc:  # not a save_to_disk folder
            raise ObjectiveError(
                f"{key}: '{p}' is not a datasets save_to_disk folder ({exc})"
            ) from None
    else:
        builder = _FILE_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise ObjectiveError(
                f"{key}: cannot read '{p.name}'; use a datasets save_to_disk folder or a "
                f"{'/'.join(sorted(_FILE_BUILDERS))} file"
            )
        try:
            data = datasets.load_dataset(builder, data_files=str(p), split="train")
        except Exception as exc:  # parse errors, and "corresponds to no data" for empty files
            raise ObjectiveError(f"{key}: cannot read '{p}' as {builder}: {exc}") from None
    if len(data) == 0:
        raise ObjectiveError(f"{key}: split '{split}' of '{p}' is empty")
    return data


def _saved_empty(folder: Path) -> bool:
    state = folder / "state.json"
    return state.is_file() and json.loads(state.read_text()).get("_data_files") == []


def subset_indices(n: int, samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a subset of ``samples`` of ``n`` examples, fixed by ``seed``.

    ``samples=None`` or ``samples >= n`` keeps every example.
    """
    if samples is None or samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=samples, replace=False))


def output_logits(out: Any) -> torch.Tensor:
    """The logits of a model's output: ``out.logits``, a bare tensor, or a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ObjectiveError(f"the model returned {type(out).__name__}, which has no logits")


def _column(data, name: str, key: str) -> np.ndarray:
    if name not in data.column_names:
        raise ObjectiveError(
            f"{key}: no column '{name}' in the data; columns: {', '.join(data.column_names)}"
        )
    arr = np.asarray(data.with_format("numpy", columns=[name])[:][name])
    if arr.dtype == object:
        raise ObjectiveError(f"{key}: column '{name}' is ragged; it cannot be stacked as a tensor")
    return arr


class DataObjective(Objective):
    """An objective over one split of a dataset, evaluated by batches of model inputs.

    Options (``objectives.tasks.<task>.<option>``):
        data: a ``save_to_disk`` folder, or a csv/json/jsonl/parquet file (one split).
        split: the split of a ``DatasetDict`` folder (default ``validation``).
        samples: evaluate a fixed subset of this many examples, drawn with the study seed
            (``null``: every example).
        batch_size: examples per batch (default 64).
        inputs: columns fed to the model as keyword arguments. Default: ``pixel_values`` if
            the data has it, else the ``text`` column tokenized with the head's tokenizer
            (from its expert folder, else the base folder) to at most ``max_length`` tokens.
        label: the label column (default ``label``; unlabelled objectives ignore it).
        head: the expert whose model (and head) is evaluated (default: the task itself).
        max_length: token limit for text inputs (default 128).
    """

    needs_labels: bool = True
    prefixes = True

    def __init__(
        self,
        task: str,
        *,
        data: str,
        split: str = "validation",
        samples: int | None = None,
        batch_size: int = 64,
        inputs: list[str] | None = None,
        label: str = "label",
        head: str | None = None,
        max_length: int = 128,
    ) -> None:
        super().__init__(task)
        if not isinstance(data, (str, Path)) or not str(data):
            raise ConfigError(f"{self.key('data')}: expected a path, got {data!r}")
        self.data_path = Path(data).expanduser()
        if not self.data_path.exists():
            raise MissingFileError(f"{self.key('data')}: no such file or folder '{self.data_path}'")
        if samples is not None and (
            isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
        ):
            raise ConfigError(f"{self.key('samples')}: expected a positive integer or null")
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{self.key(name)}: expected a positive integer, got {value!r}")
        if inputs is not None and (
            not isinstance(inputs, (list, tuple))
            or not inputs
            or not all(isinstance(c, str) for c in inputs)
        ):
            raise ConfigError(f"{self.key('inputs')}: expected a non-empty list of column names")
        self.split = str(split)
        self.samples = samples
        self.batch_size = batch_size
        self.inputs = list(inputs) if inputs is not None else None
        self.label = label
        self.max_length = max_length
        if head is not None:
            self.head = str(head)
        self.indices: np.ndarray | None = None
        self.order: np.ndarray | None = None
        self._inputs: list[dict[str, torch.Tensor]] = []
        self._labels: list[torch.Tensor] = []
        # Per example, for scoring chosen positions: the input tensors (rows), or the unpadded
        # encodings and the tokenizer that pads a batch of them; every label.
        self._rows: dict[str, torch.Tensor] = {}
        self._encoded: dict[str, list[Any]] | None = None
        self._padder: Any = None
        self._all_labels: torch.Tensor | None = None
        self._device = torch.device("cpu")

    # -- setup -----------------------------------------------------------------------------
    def setup(self, pool: ModelPool | None, seed: int) -> None:
        """Load the split once, draw the fixed subset and build the tensor batches.

        ``pool`` gives the tokenizer folders and the device; it may be ``None`` for data that
        need no tokenizer (tests, tools), and then the batches stay on the CPU.
        """
        if pool is not None and self.head not in pool.spec.experts:
            raise ConfigError(
                f"{self.key('head')}: no expert '{self.head}' in the pool "
                f"({', '.join(pool.spec.experts)})"
            )
        data = load_split(self.data_path, self.split, key=self.key("data"))
        self.indices = subset_indices(len(data), self.samples, seed)
        # Evaluated in a seeded random order, so every prefix is a random sample of the
        # subset (pruning's rungs); the full subset's metric does not depend on the order.
        self.order = self.indices[np.random.default_rng([seed, 1]).permutation(len(self.indices))]
        data = data.select(self.order.tolist())
        columns = self.inputs
        if columns is None:
            if "pixel_values" in data.column_names:
                columns = ["pixel_values"]
            elif "text" in data.column_names:
                columns = []
            else:
                raise ObjectiveError(
                    f"{self.key('inputs')}: the data has neither 'pixel_values' nor 'text'; "
                    f"name the model's input columns (columns: {', '.join(data.column_names)})"
                )
        device = pool.device if pool is not None else torch.device("cpu")
        labels = None
        if self.needs_labels:
            raw = _column(data, self.label, self.key("label"))
            if not np.issubdtype(raw.dtype, np.integer):
                raise ObjectiveError(
                    f"{self.key('label')}: column '{self.label}' holds {raw.dtype} values; "
                    "labels must be integer class ids"
                )
            labels = torch.from_numpy(raw.astype(np.int64))
        self._device = device
        if columns:
            self._rows = {
                c: torch.from_numpy(_column(data, c, self.key("inputs"))).to(device)
                for c in columns
            }
            self._inputs = self._split(self._rows)  # views of the rows
        else:
            self._inputs = self._tokenize(pool, list(data["text"]))
        self._all_labels = None if labels is None else labels.to(device)
        self._labels = [] if labels is None else self._split_one(self._all_labels)

    def _split_one(self, t: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(t, self.batch_size))

    def _split(self, arrays: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        parts = {k: self._split_one(v) for k, v in arrays.items()}
        n = len(next(iter(parts.values())))
        return [{k: v[i] for k, v in parts.items()} for i in range(n)]

    def _tokenize(self, pool: ModelPool | None, texts: list[str]) -> list[dict[str, torch.Tensor]]:
        """Encode every text once (truncated, unpadded; kept for :meth:`_gather`) and pad
        consecutive runs of ``batch_size`` into the prebuilt batches."""
        tokenizer = self._tokenizer(pool)
        encoded = tokenizer([str(t) for t in texts], truncation=True, max_length=self.max_length)
        self._encoded, self._padder = dict(encoded), tokenizer
        n = len(texts)
        return [
            self._gather(np.arange(s, min(s + self.batch_size, n)))
            for s in range(0, n, self.batch_size)
        ]

    def _tokenizer(self, pool: ModelPool | None):
        from transformers import AutoTokenizer

        where = [] if pool is None else [pool.spec.experts[self.head], pool.spec.base]
        for folder in where:
            # Check the files first: transformers 5 builds an *empty* tokenizer from a folder
            # that has a config.json but no tokenizer files, instead of failing.
            if any((Path(folder) / f).is_file() for f in _TOKENIZER_FILES):
                try:
                    return AutoTokenizer.from_pretrained(folder)
                except Exception as exc:
                    raise ObjectiveError(
                        f"{self.key('inputs')}: cannot load the tokenizer in '{folder}': {exc}"
                    ) from None
        raise ObjectiveError(
            f"{self.key('inputs')}: the 'text' column needs a tokenizer, but none loads from "
            f"{' or '.join(repr(str(f)) for f in where) or 'a pool (none given)'}"
        )

    # -- model access ----------------------------------------------------------------------
    def _ready(self) -> None:
        if self.indices is None:
            raise RuntimeError(f"objective '{self.task}': call setup(pool, seed) first")

    def batches(self, limit: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        self._ready()
        yield from self._inputs[:limit]

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        param = next(model.parameters(), None)
        if param is not None:  # follow the model's device and float dtype
            batch = {
                k: v.to(param.device, param.dtype if v.is_floating_point() else None)
                for k, v in batch.items()
            }
        return output_logits(model(**batch))

    # -- metric ----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> float:
        """Mean of the per-example metric over the fixed subset."""
        self._ready()
        total, count = self._sum(model, 0, len(self.order))
        return total / count

    def evaluate_range(self, model: nn.Module, start: float, stop: float) -> tuple[float, int]:
        """Sum and count over the examples ``[size(start), size(stop))`` of the seeded order,
        where the prefix ``f`` holds ``max(1, ceil(f · n))`` examples (all of them at 1)."""
        self._ready()
        return self._sum(model, self._size(start), self._size(stop))

    def evaluate_examples(self, model: nn.Module, start: float, stop: float) -> torch.Tensor:
        """Per-example metric over the same range as :meth:`evaluate_range` (float64, in the
        seeded order)."""
        self._ready()
        return self._values(model, self._size(start), self._size(stop))

    def evaluate_positions(self, model: nn.Module, positions: Sequence[int]) -> torch.Tensor:
        """Per-example metric of the examples at ``positions`` of the seeded order, in the order
        given, in batches of ``batch_size`` built from them (text padded to each batch's own
        longest example); the values match a whole evaluation's up to float rounding."""
        self._ready()
        pos = np.asarray(positions, dtype=np.int64)
        n = len(self.order)
        if len(pos) and (pos.min() < 0 or pos.max() >= n or len(np.unique(pos)) != len(pos)):
            raise ObjectiveError(
                f"objective '{self.task}': positions must be distinct and in [0, {n})"
            )
        parts: list[torch.Tensor] = []
        with torch.inference_mode():
            for s in range(0, len(pos), self.batch_size):
                chunk = pos[s : s + self.batch_size]
                labels = self._all_labels
                labels = None if labels is None else labels[torch.from_numpy(chunk)]
                parts.append(self._batch_values(model, self._gather(chunk), labels))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def _gather(self, chunk: np.ndarray) -> dict[str, torch.Tensor]:
        """One model-input batch of the examples at ``chunk``: text padded to its own longest
        example (so a batch of short examples is cheap), tensors by row."""
        if self._encoded is None:
            index = torch.from_numpy(chunk)
            return {k: v[index] for k, v in self._rows.items()}
        features = [{k: v[i] for k, v in self._encoded.items()} for i in chunk.tolist()]
        batch = self._padder.pad(features, padding=True, return_tensors="pt")
        return {k: v.to(self._device) for k, v in batch.items()}

    def _size(self, fraction: float) -> int:
        return prefix_size(fraction, len(self.order))

    def _sum(self, model: nn.Module, lo: int, hi: int) -> tuple[float, int]:
        values = self._values(model, lo, hi)
        return float(values.sum()), len(values)

    def _values(self, model: nn.Module, lo: int, hi: int) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        seen = 0
        with torch.inference_mode():
            for i, batch in enumerate(self._inputs):
                if seen >= hi:
                    break
                size = len(next(iter(batch.values())))
                a, b = max(lo - seen, 0), min(hi - seen, size)  # this batch's part of the range
                seen += size
                if a >= b:
                    continue
                part = {k: v[a:b] for k, v in batch.items()}
                labels = self._labels[i][a:b] if self.needs_labels else None
                parts.append(self._batch_values(model, part, labels))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def _batch_values(
        self, model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-example metric (float64, CPU) of one batch."""
        logits = self.logits(model, batch).float()
        labels = labels.to(logits.device) if labels is not None else None
        if labels is not None and len(labels) and int(labels.max()) >= logits.shape[-1]:
            raise ObjectiveError(
                f"{self.key('label')}: label {int(labels.max())} is out of range for a "
                f"model with {logits.shape[-1]} outputs"
            )
        return self.scores(logits, labels).detach().to("cpu", torch.float64)

    @abstractmethod
    def scores(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The metric of each example of one batch (float32 logits; labels when
        ``needs_labels``); the objective's value is their mean."""
