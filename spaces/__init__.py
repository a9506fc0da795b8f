"""Coefficient spaces: one module per kind, one registry line each.

A space declares named, bounded parameters and maps a point (``{name: value}``) to a
:class:`~mergesweep.plan.MergePlan` over a pool layout. Kinds: ``modelwise``, ``layerwise``,
``groupwise``, ``density``, ``lines``, ``anchors``.
"""

from __future__ import annotations

import inspect

from mergesweep.errors import ConfigError
from mergesweep.pool import PoolLayout
from mergesweep.registry import Registry
from mergesweep.spaces.anchors import Anchors
from mergesweep.spaces.base import GroupedSpace, Param, Space
from mergesweep.spaces.density import Density
from mergesweep.spaces.groupwise import GroupWise
from mergesweep.spaces.layerwise import LayerWise
from mergesweep.spaces.lines import Lines
from mergesweep.spaces.modelwise import ModelWise

__all__ = [
    "SPACES",
    "Anchors",
    "Density",
    "GroupWise",
    "GroupedSpace",
    "LayerWise",
    "Lines",
    "ModelWise",
    "Param",
    "Space",
    "build_space",
    "space_options",
]

SPACES: Registry[type[Space]] = Registry("space", key="space.kind")
SPACES.register("modelwise")(ModelWise)
SPACES.register("layerwise")(LayerWise)
SPACES.register("groupwise")(GroupWise)
SPACES.register("density")(Density)
SPACES.register("lines")(Lines)
SPACES.register("anchors")(Anchors)


def space_options(cls: type[Space]) -> list[str]:
    """The option names a space kind accepts (its keyword-only constructor arguments)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_space(kind: str, layout: PoolLayout, options: dict | None = None) -> Space:
    """Build the space registered as ``kind`` over ``layout`` with its config options.

    Raises:
        UnknownNameError: no space kind ``kind`` is registered (the message lists them).
        ConfigError: ``options`` holds an option the kind does not take, lacks a required one,
            or has a bad value (the message starts with ``space.options``).
        SpaceError: the options do not fit the pool (e.g. a regex selecting no tensor).
    """
    cls = SPACES.get(kind)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"space.options: expected a mapping, got {options!r}")
    valid = space_options(cls)
    for name in options:
        if name not in valid:
            raise ConfigError(
                f"space.options: unknown option '{name}' for space '{kind}'; "
                f"valid options: {', '.join(valid)}"
            )
    required = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    missing = [name for name in required if name not in options]
    if missing:
        raise ConfigError(f"space.options: space '{kind}' needs option '{missing[0]}'")
    return cls(layout, **options)
