"""Validation of space options as they arrive from YAML: each error starts with its key path."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from mergesweep.errors import ConfigError

__all__ = ["bounds", "choice", "flag", "integer", "number", "per_expert"]

PREFIX = "space.options."


def number(value: Any, name: str) -> float:
    """A finite real number (YAML ints are accepted; bools and strings are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{PREFIX}{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{PREFIX}{name}: expected a finite number, got {value!r}")
    return v


def integer(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{PREFIX}{name}: expected an integer ≥ {minimum}, got {value!r}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{name}: expected true or false, got {value!r}")
    return value


def choice(value: Any, name: str, choices: Collection[str]) -> str:
    if value not in choices:
        raise ConfigError(
            f"{PREFIX}{name}: unknown value {value!r}; choose one of {', '.join(choices)}"
        )
    return str(value)


def bounds(
    low: Any, high: Any, init: Any, *, names: tuple[str, str, str] = ("low", "high", "init")
) -> tuple[float, float, float]:
    """Check ``low < high`` and ``low ≤ init ≤ high``; return them as floats."""
    lo, hi, ini = number(low, names[0]), number(high, names[1]), number(init, names[2])
    if not lo < hi:
        raise ConfigError(f"{PREFIX}{names[0]}: {lo} must be below {names[1]} = {hi}")
    if not lo <= ini <= hi:
        raise ConfigError(f"{PREFIX}{names[2]}: {ini} lies outside [{lo}, {hi}]")
    return lo, hi, ini


def per_expert(value: Any, name: str, experts: Sequence[str]) -> list[float]:
    """One number per expert from a scalar, a list in expert order or a ``{expert: value}`` map."""
    if isinstance(value, Mapping):
        if set(value) != set(experts):
            raise ConfigError(
                f"{PREFIX}{name}: keys {sorted(value)} must be exactly the experts {list(experts)}"
            )
        return [number(value[e], f"{name}.{e}") for e in experts]
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(experts):
            raise ConfigError(
                f"{PREFIX}{name}: {len(value)} values given for {len(experts)} experts"
            )
        return [number(v, f"{name}[{i}]") for i, v in enumerate(value)]
    v = number(value, name)
    return [v] * len(experts)
