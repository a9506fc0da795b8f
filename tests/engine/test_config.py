"""Experiment config: validation with key paths, overrides, YAML errors."""

from __future__ import annotations

import pytest

from mergesweep.config import apply_overrides, load_config, parse_config, resolve_strings
from mergesweep.errors import ConfigError, MissingFileError

BASE = {
    "pool": {"base": "b", "experts": {"a": "ea", "b": "eb"}},
    "objectives": {"tasks": {"a": {"kind": "accuracy"}, "b": {"kind": "accuracy"}}},
}


def test_defaults_fill_in() -> None:
    cfg = parse_config(BASE, default_name="x")
    assert cfg.name == "x"
    assert cfg.budget.trials == 30
    assert cfg.searcher.name == "tpe"
    assert cfg.storage == "sqlite:///mergesweep.db"
    assert cfg.executor.kind == "ray" and cfg.executor.prefetch == 1


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"spcae": {}}, r"^spcae: unknown key; valid keys here: pool, objectives, name"),
        ({"space": {"kind": "layerwise", "opts": {}}}, r"^space\.opts: unknown key"),
        ({"budget": {"trials": "many"}}, r"^budget\.trials: expected an integer, got 'many'"),
        ({"budget": {"trials": 0}}, r"^budget\.trials: must be at least 1"),
        ({"pool": {"base": "b", "experts": {"a": "x"}, "dtype": "f8"}}, r"^pool\.dtype: 'f8'"),
        ({"pool": {"experts": {"a": "x"}}}, r"^pool\.base: missing required key"),
        ({"objectives": {"tasks": {"a": {}}}}, r"^objectives\.tasks\.a\.kind: missing"),
        ({"objectives": {"tasks": {"z": {"kind": "accuracy"}}}}, r"no expert named 'z'"),
        ({"objectives": {"mode": "sum", "tasks": {"a": {"kind": "x"}}}}, r"^objectives\.mode"),
        ({"name": "a b"}, r"^name: 'a b' may use only"),
        ({"executor": {"workers": 0}}, r"^executor\.workers: must be at least 1"),
        (
            {"pool": {"base": "b", "experts": {"a": "x"}, "device": "gpu"}},
            r"^pool\.device: 'gpu' is not a device; use cpu, cuda or cuda:N",
        ),
    ],
)
def test_bad_config_names_the_key(patch: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({**BASE, **patch})


def test_gpu_pool_parses_without_a_gpu_here() -> None:
    # the driver may have no GPU: the pool's device is checked where the pool loads
    pool = {"base": "b", "experts": {"a": "x", "b": "y"}, "device": "cuda:0"}
    for executor in ({"num_gpus": 0.5}, {"kind": "inline"}, {"num_gpus": 0}):
        cfg = parse_config({**BASE, "pool": pool, "executor": executor})
        assert cfg.pool.device == "cuda:0"


def test_weighted_needs_every_weight() -> None:
    data = {**BASE, "objectives": {**BASE["objectives"], "mode": "weighted", "weights": {"a": 1}}}
    with pytest.raises(ConfigError, match=r"objectives\.weights: no weight for task\(s\) \['b'\]"):
        parse_config(data)


def test_overrides_are_typed_and_nested() -> None:
    out = apply_overrides(BASE, ["budget.trials=7", "space.options.low=-0.5", "searcher.name=gp"])
    cfg = parse_config(out)
    assert cfg.budget.trials == 7
    assert cfg.space.options["low"] == -0.5
    assert cfg.searcher.name == "gp"
    assert "budget" not in BASE  # the input is not modified
    with pytest.raises(ConfigError, match=r"override 'budget': expected key\.sub=value"):
        apply_overrides(BASE, ["budget"])
    with pytest.raises(ConfigError, match=r"^pool\.base: not a mapping"):
        apply_overrides(BASE, ["pool.base.x=1"])


def test_yaml_file_errors(tmp_path) -> None:
    with pytest.raises(MissingFileError, match=r"config: no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml' line \d+ is not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping"):
        load_config(scalar)


def test_name_defaults_to_file_stem(tmp_path) -> None:
    import yaml

    path = tmp_path / "my-sweep.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_config(path, ["seed=3"]).name == "my-sweep"
    assert load_config(path, ["seed=3"]).seed == 3


def test_resolve_strings_expands_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    out = resolve_strings({"a": ["~/x", 3], "b": "plain"})
    assert out == {"a": [f"{tmp_path}/x", 3], "b": "plain"}
