"""mergekit configs: which methods map, per-tensor filters that mergekit's first-match lookup
resolves to each tensor's own coefficient, and notes where nothing maps."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from mergesweep.mergekit import mergekit_config
from mergesweep.plan import MergePlan

NAMES = [
    "transformer.wte.weight",
    "transformer.h.1.attn.c_attn.weight",
    "transformer.h.11.attn.c_attn.weight",
    "transformer.h.1.attn.c_attn.bias",
    "transformer.ln_f.weight",
]


def _config(method: str, plan: MergePlan, **changes):
    kwargs = {
        "method": method,
        "options": {},
        "plan": plan,
        "names": NAMES,
        "base": "/m/base",
        "experts": {"a": "/m/a", "b": "/m/b"},
        "dtype": "float32",
        "per_task": [],
        "renamed": [],
        "prefix": "transformer",
        "header": "study 's', trial 3",
    }
    kwargs.update(changes)
    return mergekit_config(**kwargs)


def _lookup(setting, tensor: str) -> float:
    """mergekit's evaluate_setting for scalars and lists of {filter, value} conditions."""
    if isinstance(setting, (int, float)):
        return float(setting)
    return float(next(c["value"] for c in setting if c["filter"] in tensor))


def test_model_wise_task_arithmetic_is_two_scalars() -> None:
    res = _config("linear", MergePlan.uniform(len(NAMES), [0.3, 0.7]))
    assert res.exact and res.note is None
    assert res.yaml.startswith("# study 's', trial 3\n")
    cfg = yaml.safe_load(res.yaml)
    assert cfg == {
        "merge_method": "task_arithmetic",
        "base_model": "/m/base",
        "dtype": "float32",
        "parameters": {"normalize": False},
        "models": [
            {"model": "/m/a", "parameters": {"weight": 0.3}},
            {"model": "/m/b", "parameters": {"weight": 0.7}},
        ],
    }


def test_per_tensor_weights_and_densities_resolve_to_each_tensor() -> None:
    rng = np.random.default_rng(0)
    coeffs = rng.uniform(-0.5, 1.5, (len(NAMES), 2))
    dens = rng.uniform(0.1, 0.9, (len(NAMES), 2))
    res = _config("ties", MergePlan(coeffs, dens), options={"merge": "sum", "density": 0.2})
    cfg = yaml.safe_load(res.yaml)
    assert cfg["merge_method"] == "ties" and res.exact
    for k, model in enumerate(cfg["models"]):
        for i, name in enumerate(NAMES):
            # With and without the prefix: mergekit's architecture files name GPT-2 tensors
            # "h.1.attn..."; "h.1." must not catch "h.11.", nor ".weight" catch ".bias".
            for tensor in (name, name.removeprefix("transformer.")):
                assert _lookup(model["parameters"]["weight"], tensor) == pytest.approx(coeffs[i, k])
                assert _lookup(model["parameters"]["density"], tensor) == pytest.approx(dens[i, k])


def test_dare_density_is_one_minus_p_and_not_exact() -> None:
    res = _config("dare_linear", MergePlan.uniform(len(NAMES), [1, 1]), options={"p": 0.3})
    cfg = yaml.safe_load(res.yaml)
    assert cfg["merge_method"] == "dare_linear" and not res.exact
    assert all(m["parameters"]["density"] == pytest.approx(0.7) for m in cfg["models"])
    ok = _config(
        "dare_ties",
        MergePlan.uniform(len(NAMES), [1, 1]),
        options={"p": 0.5, "density": 1.0, "merge": "sum"},
    )
    assert yaml.safe_load(ok.yaml)["merge_method"] == "dare_ties"


@pytest.mark.parametrize(
    ("method", "changes", "note"),
    [
        ("ties", {}, r"TIES with merge: mean .* use method\.options\.merge: sum"),
        ("dare_ties", {"options": {"merge": "sum"}}, r"dare_ties trims by magnitude"),
        ("fisher", {}, r"mergekit has no equivalent of method 'fisher'"),
        ("lines", {}, r"no equivalent of method 'lines'"),
        ("linear", {"per_task": ["classifier.weight"]}, r"keep tensors of their own \(classifier"),
        ("linear", {"renamed": ["vit.layers.0.x"]}, r"renames checkpoint tensors .*'vit\.layers"),
        (
            "linear",
            {"names": ["transformer.ln.weight", "ln.weight"]},
            r"not distinguishable by mergekit's filters",
        ),
    ],
)
def test_notes_say_why_mergekit_cannot_express_it(method, changes, note) -> None:
    names = changes.get("names", NAMES)
    res = _config(method, MergePlan.uniform(len(names), [0.5, 0.5]), **changes)
    assert res.yaml is None and re.search(note, res.note), res.note
