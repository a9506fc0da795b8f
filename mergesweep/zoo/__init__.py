"""The model zoo: small pools of a base and experts, built locally, cached, never committed.

A zoo is a folder ``<cache>/zoo/<name>-<recipe hash>`` holding a base and one expert per task as
Hugging Face folders, each task's data as a ``datasets`` folder and a ``zoo.json`` manifest.
``<cache>`` is ``$MERGESWEEP_CACHE`` if set, else ``~/.cache/mergesweep``. The recipe hash covers
every setting of the recipe, so a changed recipe builds into a new folder and a cached zoo is
never stale.

Example:
    >>> from mergesweep.zoo import ensure_zoo, zoo_manifest
    >>> folder = ensure_zoo("digits")  # doctest: +SKIP
    >>> zoo_manifest("digits")["tasks"]  # doctest: +SKIP
    ['low', 'high', 'parity', 'loop']
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesweep.errors import MissingFileError
from mergesweep.registry import Registry

__all__ = [
    "ZOOS",
    "ZooBuilder",
    "cache_root",
    "ensure_zoo",
    "recipe_hash",
    "zoo_dir",
    "zoo_manifest",
]

MANIFEST = "zoo.json"


@dataclass(frozen=True)
class ZooBuilder:
    """How one zoo is made.

    Attributes:
        name: the zoo's name (``mergesweep zoo build NAME``).
        recipe: every setting that determines the result (hashed into the folder name).
        build: ``build(folder, progress=..., threads=...)`` writes the zoo into the empty
            ``folder`` and returns the manifest's fields (tasks, num_labels, accuracies, ...).
    """

    name: str
    recipe: Mapping[str, Any]
    build: Callable[..., dict[str, Any]]


ZOOS: Registry[ZooBuilder] = Registry("zoo", key="zoo")


def _register_builtins() -> None:
    from mergesweep.zoo import digits, lm, text

    ZOOS.register("digits")(ZooBuilder("digits", digits.RECIPE, digits.build))
    ZOOS.register("text")(ZooBuilder("text", text.RECIPE, text.build))
    ZOOS.register("lm")(ZooBuilder("lm", lm.RECIPE, lm.build))


_register_builtins()


def cache_root() -> Path:
    """``$MERGESWEEP_CACHE`` if set, else ``~/.cache/mergesweep``."""
    return Path(os.environ.get("MERGESWEEP_CACHE") or "~/.cache/mergesweep").expanduser()


def recipe_hash(name: str) -> str:
    """A 12-hex-digit hash of the zoo's name and recipe (stable across runs and machines)."""
    builder = ZOOS.get(name)
    blob = json.dumps({"name": builder.name, "recipe": builder.recipe}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def zoo_dir(name: str) -> Path:
    """The folder of zoo ``name`` (it may not be built yet; see :func:`ensure_zoo`)."""
    return cache_root() / "zoo" / f"{name}-{recipe_hash(name)}"


def ensure_zoo(name: str, *, progress: bool = True, threads: int = 1) -> Path:
    """Return the folder of zoo ``name``, building it first if it is not there.

    The build writes into a private temporary folder beside the final one and renames it into
    place when complete, so a killed build never leaves a half zoo, and two concurrent builds
    end with one complete zoo (the loser discards its copy).

    Args:
        name: a registered zoo (``ZOOS.names()``).
        progress: show a progress bar while building.
        threads: torch threads during the build (restored afterwards); 1 is fastest on a busy
            2-core machine.
    """
    builder = ZOOS.get(name)
    final = zoo_dir(name)
    if (final / MANIFEST).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        start = time.perf_counter()
        fields = builder.build(tmp, progress=progress, threads=threads)
        manifest = {
            "name": name,
            "recipe_hash": recipe_hash(name),
            "recipe": dict(builder.recipe),
            **fields,
            "build_seconds": round(time.perf_counter() - start, 1),
            "threads": threads,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists() and not (final / MANIFEST).is_file():
            shutil.rmtree(final)  # a folder without a manifest is not a zoo (e.g. hand-made)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def zoo_manifest(name: str) -> dict[str, Any]:
    """The ``zoo.json`` of a built zoo.

    Raises:
        MissingFileError: the zoo is not built (``mergesweep zoo build NAME`` builds it).
    """
    path = zoo_dir(name) / MANIFEST
    if not path.is_file():
        raise MissingFileError(
            f"zoo: '{name}' is not built ('{path}' is missing); build it with "
            f"`mergesweep zoo build {name}` or mergesweep.zoo.ensure_zoo('{name}')"
        )
    return json.loads(path.read_text())
