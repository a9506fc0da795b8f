"""The space protocol: named bounded parameters and a map from a point to a MergePlan."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from mergesweep.errors import SpaceError
from mergesweep.plan import MergePlan
from mergesweep.pool import PoolLayout
from mergesweep.spaces.layers import index_labels

__all__ = ["GroupedSpace", "Param", "Space"]


@dataclass(frozen=True)
class Param:
    """One searched coefficient: ``low ≤ value ≤ high``; ``init`` is the natural start point."""

    name: str
    low: float
    high: float
    init: float
    log: bool = False
    step: float | None = None

    def check(self, value: float) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise SpaceError(
                f"space: parameter '{self.name}' = {value!r} is not a number"
            ) from None
        if not (self.low <= v <= self.high):
            raise SpaceError(
                f"space: parameter '{self.name}' = {v} is outside its bounds "
                f"[{self.low}, {self.high}]"
            )
        return v


class Space(ABC):
    """A coefficient space over a pool layout.

    Subclasses set ``kind``, take their options as keyword-only constructor arguments, fill
    ``self.params`` in ``__init__`` and implement :meth:`to_plan`.
    """

    kind: ClassVar[str]

    def __init__(self, layout: PoolLayout) -> None:
        self.layout = layout
        self.params: list[Param] = []

    @property
    def dim(self) -> int:
        """Number of searched parameters."""
        return len(self.params)

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def init_point(self) -> dict[str, float]:
        """The point every parameter's ``init`` gives (e.g. task arithmetic at λ = 0.3)."""
        return {p.name: p.init for p in self.params}

    def check(self, point: Mapping[str, float]) -> dict[str, float]:
        """Validate a point: every parameter present, in bounds, nothing extra."""
        extra = set(point) - set(self.names())
        if extra:
            raise SpaceError(f"space: unknown parameter(s) {sorted(extra)} for a {self.kind} space")
        missing = [p.name for p in self.params if p.name not in point]
        if missing:
            raise SpaceError(f"space: point lacks parameter(s) {missing[:5]}")
        return {p.name: p.check(point[p.name]) for p in self.params}

    @abstractmethod
    def to_plan(self, point: Mapping[str, float]) -> MergePlan:
        """Map a (checked) point to per-tensor, per-expert coefficients."""

    def options(self) -> dict[str, Any]:
        """The constructor options, for the hash and the stored config."""
        return {}

    def hash(self) -> str:
        """Stable across processes: kind, options, parameters and the pool's tensor names."""
        blob = json.dumps(
            {
                "kind": self.kind,
                "options": self.options(),
                "params": [asdict(p) for p in self.params],
                "experts": list(self.layout.experts),
                "names": list(self.layout.names),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class GroupedSpace(Space):
    """One λ per expert per tensor group: tensors with the same label share coefficients.

    Subclasses compute a label per tensor and call :meth:`_set_groups` in ``__init__``;
    parameters are ``lambda.<expert>.<label>``, expert-major, labels in layout order.
    """

    def _set_groups(
        self, labels: list[str] | tuple[str, ...], low: float, high: float, init: float
    ) -> None:
        self.groups, self.group_index = index_labels(labels)
        self.params = [
            Param(f"lambda.{e}.{g}", low, high, init)
            for e in self.layout.experts
            for g in self.groups
        ]

    def to_plan(self, point: Mapping[str, float]) -> MergePlan:
        p = self.check(point)
        values = np.array(
            [[p[f"lambda.{e}.{g}"] for e in self.layout.experts] for g in self.groups]
        )
        return MergePlan(values[self.group_index])
