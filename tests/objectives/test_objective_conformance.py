"""The suite every registered objective kind must pass."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mergesweep.errors import ConfigError, UnknownNameError
from mergesweep.objectives import DIRECTIONS, OBJECTIVES, build_objective

# kind -> spec(data folder, callable module); a new kind must add itself here.
SPECS: dict[str, Callable[[Path, str], dict]] = {
    "accuracy": lambda data, mod: {"kind": "accuracy", "data": str(data), "batch_size": 2},
    "cross_entropy": lambda data, mod: {"kind": "cross_entropy", "data": str(data)},
    "entropy": lambda data, mod: {"kind": "entropy", "data": str(data), "split": "train"},
    "callable": lambda data, mod: {"kind": "callable", "function": f"{mod}:scale"},
    "lmeval": lambda data, mod: {"kind": "lmeval", "tasks": "tiny_yesno", "num_fewshot": 0},
}
# Kinds that score another model than ``passthrough``: kind -> (extra options, model), given
# the request (for session fixtures such as ``tiny_lm``).
OWN_MODEL: dict[str, Callable[[pytest.FixtureRequest], tuple[dict, torch.nn.Module]]] = {
    "lmeval": lambda request: _tiny_lm_case(request.getfixturevalue("tiny_lm")),
}
REQUIRED = {"callable": "function", "lmeval": "tasks"}  # default: "data"


def _tiny_lm_case(tiny: dict[str, Path]) -> tuple[dict, torch.nn.Module]:
    from transformers import AutoModelForCausalLM

    options = {"include_path": str(tiny["tasks"]), "samples": 6, "dtype": "float32"}
    return options, AutoModelForCausalLM.from_pretrained(str(tiny["a"])).eval()


def test_every_registered_kind_has_a_conformance_spec() -> None:
    assert set(OBJECTIVES.names()) == set(SPECS)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_objective_conformance(kind, logit_data, callable_module, passthrough, request) -> None:
    extra, model = OWN_MODEL[kind](request) if kind in OWN_MODEL else ({}, passthrough)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a value no objective would pick: any change shows
    try:
        spec = {**SPECS[kind](logit_data, callable_module), **extra}
        obj = build_objective("t", spec)
        assert obj.kind == kind and obj.task == "t" and obj.head == "t"
        assert isinstance(obj.metric, str) and obj.metric
        assert obj.direction in DIRECTIONS
        obj.setup(None, seed=0)
        first, second = obj.evaluate(model), obj.evaluate(model)
        assert isinstance(first, float) and math.isfinite(first)
        assert first == second
        again = build_objective("t", spec)
        again.setup(None, seed=0)
        assert again.evaluate(model) == first
        assert all(p.grad is None for p in model.parameters())  # evaluation builds no graph
        assert torch.get_num_threads() == 3
        try:
            batches = list(obj.batches(limit=1))
        except NotImplementedError:
            return
        assert len(batches) == 1 and "label" not in batches[0]
        obj.logits(passthrough, batches[0]).sum().backward()  # differentiable for AdaMerging
        assert passthrough.scale.grad is not None
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_unknown_and_missing_options_name_their_key(kind, logit_data, callable_module) -> None:
    spec = SPECS[kind](logit_data, callable_module)
    with pytest.raises(
        ConfigError, match=rf"^objectives\.tasks\.t\.bogus: unknown option .*'{kind}'"
    ):
        build_objective("t", {**spec, "bogus": 1})
    required = REQUIRED.get(kind, "data")
    with pytest.raises(ConfigError, match=rf"^objectives\.tasks\.t\.{required}: required"):
        build_objective("t", {k: v for k, v in spec.items() if k != required})


def test_kind_errors() -> None:
    with pytest.raises(ConfigError, match=r"objectives\.tasks\.t\.kind: missing; choose one of"):
        build_objective("t", {"data": "x"})
    with pytest.raises(
        UnknownNameError,
        match=r"objectives\.tasks\.t\.kind: unknown objective 'f1'; choose one of accuracy, "
        r"callable, cross_entropy, entropy",
    ):
        build_objective("t", {"kind": "f1"})
    with pytest.raises(ConfigError, match=r"objectives\.tasks\.t: expected a mapping"):
        build_objective("t", "accuracy")  # type: ignore[arg-type]
