"""Shared tensor-name parsing for every space: layer indices, depth, blocks and regex groups.

Layer index: the first match of ``layer_regex`` (``re.search``) in a tensor name; its group 1
is the index, e.g. ``vit.layers.3.mlp.fc1.weight`` → 3 with the default ``r"\\.(\\d+)\\."``.
The ``L`` distinct indices, ascending, give each layer a depth ``0 … L−1``.

Tensors without a layer index are placed by their position in the pool layout (the model's
module order for Hugging Face folders, the file's order for weight files):

* before the first layer tensor → block ``embed``, depth 0;
* after the last layer tensor → block ``final``, depth ``L−1``;
* between layer tensors (rare: e.g. an encoder's final norm between encoder and decoder) →
  block ``other``, at the depth of the layer tensor just before it.

A weight *file* whose keys are stored alphabetically puts e.g. ``vit.layernorm.*`` before
``vit.layers.*``; such a tensor then counts as ``embed``. Pools given as Hugging Face folders
keep the model's order and are not affected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mergesweep.errors import ConfigError, SpaceError

__all__ = [
    "DEFAULT_LAYER_REGEX",
    "GROUPS_KEY",
    "LAYER_KEY",
    "REST",
    "LayerMap",
    "assign_groups",
    "group_pairs",
    "index_labels",
    "parse_layers",
    "tensor_labels",
]

DEFAULT_LAYER_REGEX = r"\.(\d+)\."
REST = "rest"
LAYER_KEY = "space.options.layer_regex"
GROUPS_KEY = "space.options.groups"


@dataclass(frozen=True)
class LayerMap:
    """Per-tensor layer structure of a layout.

    Attributes:
        index: parsed layer index per tensor, ``None`` for tensors outside any layer.
        layers: the distinct layer indices, ascending (``L = len(layers)``).
        blocks: per-tensor block label: ``layer<i>``, ``embed``, ``final`` or ``other``.
        depth: ``(T,)`` int array, each tensor's depth in ``0 … L−1``.
    """

    index: tuple[int | None, ...]
    layers: tuple[int, ...]
    blocks: tuple[str, ...]
    depth: np.ndarray

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def relative_depth(self) -> np.ndarray:
        """``(T,)`` floats ``depth / (L−1)`` in ``[0, 1]``; all zero when there is one layer."""
        if self.num_layers < 2:
            return np.zeros(len(self.index))
        return self.depth / (self.num_layers - 1)


def _compile(pattern: Any, key: str, *, groups: int = 0) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ConfigError(f"{key}: expected a regular expression string, got {pattern!r}")
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}: bad regex '{pattern}': {exc}") from None
    if rx.groups < groups:
        raise ConfigError(
            f"{key}: regex '{pattern}' needs a capture group for the layer index, "
            f"e.g. '{DEFAULT_LAYER_REGEX}'"
        )
    return rx


def parse_layers(names: Sequence[str], pattern: Any = DEFAULT_LAYER_REGEX) -> LayerMap:
    """Parse layer indices from tensor names (see the module docstring for the rules).

    Raises:
        ConfigError: the regex is malformed, has no group, or captures a non-number.
        SpaceError: the regex finds a layer index in no tensor name.
    """
    rx = _compile(pattern, LAYER_KEY, groups=1)
    index: list[int | None] = []
    for name in names:
        m = rx.search(name)
        g = m.group(1) if m else None
        if g is None:
            index.append(None)
            continue
        try:
            index.append(int(g))
        except ValueError:
            raise ConfigError(
                f"{LAYER_KEY}: regex '{pattern}' captures '{g}' in '{name}', not a layer number"
            ) from None
    found = [i for i, v in enumerate(index) if v is not None]
    if not found:
        sample = ", ".join(list(names)[:3])
        raise SpaceError(
            f"{LAYER_KEY}: regex '{pattern}' finds a layer index in no tensor name "
            f"(e.g. {sample}); group 1 must capture the layer number"
        )
    layers = tuple(sorted({v for v in index if v is not None}))
    rank = {v: d for d, v in enumerate(layers)}
    first, last = found[0], found[-1]
    blocks: list[str] = []
    depth = np.zeros(len(index), dtype=np.int64)
    current = 0  # depth of the latest layer tensor seen, for "other" tensors
    for t, v in enumerate(index):
        if v is not None:
            current = rank[v]
            blocks.append(f"layer{v}")
            depth[t] = current
        elif t < first:
            blocks.append("embed")
            depth[t] = 0
        elif t > last:
            blocks.append("final")
            depth[t] = len(layers) - 1
        else:
            blocks.append("other")
            depth[t] = current
    return LayerMap(index=tuple(index), layers=layers, blocks=tuple(blocks), depth=depth)


def group_pairs(groups: Any) -> list[tuple[str, str]]:
    """Normalise ``groups`` (``{name: regex}`` or ``[[name, regex], ...]``) to ordered pairs.

    Raises:
        ConfigError: not a non-empty mapping or list of pairs, a duplicate or empty name, or
            the reserved name ``rest``.
    """
    if isinstance(groups, Mapping):
        pairs = list(groups.items())
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        if not all(
            isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 for p in groups
        ):
            pairs = []  # falls through to the error below
        else:
            pairs = [(p[0], p[1]) for p in groups]
    else:
        pairs = []
    if not pairs:
        raise ConfigError(
            f"{GROUPS_KEY}: expected a non-empty mapping {{group name: regex}}, got {groups!r}"
        )
    seen: set[str] = set()
    for gname, _ in pairs:
        key = f"{GROUPS_KEY}.{gname}"
        if not isinstance(gname, str) or not gname:
            raise ConfigError(f"{key}: group names must be non-empty strings")
        if gname == REST:
            raise ConfigError(f"{key}: '{REST}' is reserved for the tensors no group selects")
        if gname in seen:
            raise ConfigError(f"{key}: group named twice")
        seen.add(gname)
    return pairs


def assign_groups(names: Sequence[str], groups: Any) -> tuple[str, ...]:
    """Label each tensor with the first group whose regex it contains, else ``rest``.

    Args:
        names: tensor names in layout order.
        groups: ``{group name: regex}`` or a list of ``[name, regex]`` pairs, searched
            (``re.search``) in order.

    Raises:
        ConfigError: see :func:`group_pairs`; or a malformed regex.
        SpaceError: a group selects no tensor (none matches, or earlier groups took them all).
    """
    pairs = group_pairs(groups)
    compiled = {g: _compile(pattern, f"{GROUPS_KEY}.{g}") for g, pattern in pairs}
    labels = [next((g for g, rx in compiled.items() if rx.search(n)), REST) for n in names]
    for gname, rx in compiled.items():
        if gname not in labels:
            hit = any(rx.search(n) for n in names)
            why = "every tensor it matches is taken by an earlier group" if hit else "no match"
            raise SpaceError(
                f"{GROUPS_KEY}.{gname}: regex '{rx.pattern}' selects no tensor ({why})"
            )
    return tuple(labels)


def index_labels(labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct labels in order of first appearance and each tensor's position among them."""
    order: dict[str, int] = {}
    idx = np.array([order.setdefault(lab, len(order)) for lab in labels], dtype=np.int64)
    return list(order), idx


def tensor_labels(names: Sequence[str], *, width: int = 40) -> list[str]:
    """Stable, readable per-tensor labels: ``t<index>.<short name>``.

    The short name drops the dotted prefix every name shares (``vit.``) and keeps at most
    ``width`` characters of whole trailing components; the index keeps labels unique.
    """
    parts = [n.split(".") for n in names]
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
    digits = len(str(max(len(names) - 1, 0)))
    out = []
    for i, p in enumerate(parts):
        rest = p[common:]
        keep = [rest[-1]]
        for comp in reversed(rest[:-1]):
            if len(comp) + 1 + sum(len(c) + 1 for c in keep) > width:
                break
            keep.insert(0, comp)
        out.append(f"t{i:0{digits}d}." + ".".join(keep))
    return out
