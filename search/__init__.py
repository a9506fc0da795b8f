"""Searchers: one module each, one registry line each."""

from __future__ import annotations

from typing import Any

from mergesweep.errors import ConfigError
from mergesweep.registry import Registry
from mergesweep.search.adamerging import AdaMerging
from mergesweep.search.base import SearchContext, Searcher, distributions
from mergesweep.search.bo import BayesOpt, DFMergeSearch
from mergesweep.search.evo_merging import EvoMerging
from mergesweep.search.map import MAP, MAPBayesian
from mergesweep.search.map_nested import NestedMAP
from mergesweep.search.samplers import GP, NSGA2, TPE, CmaEs, Grid, Random

__all__ = ["SEARCHERS", "SearchContext", "Searcher", "build_searcher", "distributions"]

SEARCHERS: Registry[type[Searcher]] = Registry("searcher", key="searcher.name")
SEARCHERS.register("tpe")(TPE)
SEARCHERS.register("gp")(GP)
SEARCHERS.register("cmaes")(CmaEs)
SEARCHERS.register("random")(Random)
SEARCHERS.register("grid")(Grid)
SEARCHERS.register("nsga2")(NSGA2)
SEARCHERS.register("bo")(BayesOpt)
SEARCHERS.register("dfmerge")(DFMergeSearch)
SEARCHERS.register("adamerging")(AdaMerging)
SEARCHERS.register("map")(MAP)
SEARCHERS.register("map_bayesian")(MAPBayesian)
SEARCHERS.register("map_nested")(NestedMAP)
SEARCHERS.register("evo_merging")(EvoMerging)


def build_searcher(name: str, options: dict[str, Any] | None = None) -> Searcher:
    """Instantiate the searcher registered as ``name`` with its config options."""
    cls = SEARCHERS.get(name)
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"searcher.options: {exc} (searcher '{name}')") from None
