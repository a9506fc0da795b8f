"""Experiment config: YAML → typed dataclasses, validated with key paths in every error.

Strings may contain ``${zoo:NAME}``, replaced by the zoo's folder (built on first use), and
``~``. Overrides are ``key.sub=value`` with YAML-typed values (``budget.trials=50``).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from mergesweep.errors import ConfigError, MissingFileError

__all__ = [
    "BudgetConfig",
    "ExecutorConfig",
    "ExperimentConfig",
    "MethodConfig",
    "ObjectivesConfig",
    "PoolConfig",
    "PruningConfig",
    "SearcherConfig",
    "SpaceConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "resolve_strings",
]


@dataclass
class PoolConfig:
    """``pool``: base, experts (task → path) and what is merged."""

    base: str
    experts: dict[str, str]
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    trust_pickle: bool = False


@dataclass
class MethodConfig:
    """``method``: the merge operator and its options."""

    name: str = "task_arithmetic"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpaceConfig:
    """``space``: what is searched."""

    kind: str = "modelwise"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectivesConfig:
    """``objectives``: one entry per task, and how they become study values.

    ``mode``: ``mean``/``weighted``/``min`` give one study value; ``pareto`` gives one per task.
    """

    tasks: dict[str, dict[str, Any]]
    mode: Literal["mean", "weighted", "min", "pareto"] = "mean"
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class SearcherConfig:
    """``searcher``: how points are chosen; ``enqueue`` lists starting points (``init`` = the
    space's natural start, e.g. task arithmetic at λ = 0.3, or a dict of parameter values)."""

    name: str = "tpe"
    options: dict[str, Any] = field(default_factory=dict)
    enqueue: list[Any] = field(default_factory=list)


@dataclass
class BudgetConfig:
    """``budget``: complete trials to reach, and failures tolerated before the sweep stops."""

    trials: int = 30
    max_failures: int = 10


@dataclass
class ExecutorConfig:
    """``executor``: where trials run."""

    kind: str = "ray"
    workers: int = 1
    threads: int = 1
    num_gpus: float = 0.0
    trial_timeout_s: float | None = None
    ray_address: str | None = None
    max_retries: int = 1
    # Ray: jobs queued on each worker behind the running one, so the worker never waits for
    # the driver's ask/tell (0: the sampler sees every result before the next point).
    prefetch: int = 1


@dataclass
class PruningConfig:
    """``pruning``: multi-fidelity evaluation (off unless ``pruner`` is set).

    A trial is scored on growing prefixes of every task's fixed subset (``rungs``: fractions,
    nested, the full subset last); after each rung ``pruner`` may stop it: ``median`` (below
    the median of complete trials at that rung), ``halving`` (outside the best
    1/``reduction`` of every trial at that rung, or of the last ``window`` of them when
    ``window`` is above 0), ``best`` (worse than the best complete
    trial at that rung, on the same examples, by more than ``margin``) or ``paired`` (example
    by example against the best complete trial: less than ``1 - confidence`` chance of
    matching it on the full subsets). No trial is pruned before ``startup_trials`` are complete.

    ``order`` (``paired`` only): ``seeded`` scores every trial's rungs on the same seeded
    random prefixes; ``contentious`` scores first the examples on which the complete trials
    disagreed most with the best one, since two merges of one pool differ on only a few
    examples, so a small first rung holds most of the evidence.
    """

    pruner: Literal["none", "median", "halving", "best", "paired"] = "none"
    rungs: list[float] = field(default_factory=lambda: [0.25])
    startup_trials: int = 5
    reduction: int = 3
    margin: float = 0.0
    window: int = 0
    confidence: float = 0.9
    order: Literal["seeded", "contentious"] = "seeded"


@dataclass
class ExperimentConfig:
    """A whole experiment; ``name`` is the study name (default: the config file's stem)."""

    pool: PoolConfig
    objectives: ObjectivesConfig
    name: str = "study"
    seed: int = 0
    storage: str = "sqlite:///mergesweep.db"
    method: MethodConfig = field(default_factory=MethodConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- validation ------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: unexpected value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, choices))}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        _, vt = get_args(tp)
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in fields:
            valid = ", ".join(fields)
            raise ConfigError(f"{prefix}{name}: unknown key; valid keys here: {valid}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: missing required key")
    return cls(**kwargs)


def _check(cfg: ExperimentConfig) -> None:
    if cfg.budget.trials < 1:
        raise ConfigError("budget.trials: must be at least 1")
    if cfg.executor.workers < 1:
        raise ConfigError("executor.workers: must be at least 1")
    if cfg.executor.threads < 1:
        raise ConfigError("executor.threads: must be at least 1")
    if cfg.executor.prefetch < 0:
        raise ConfigError("executor.prefetch: must be 0 or more")
    if not cfg.objectives.tasks:
        raise ConfigError("objectives.tasks: at least one task is needed")
    check_device_name(cfg.pool.device)
    for task, spec in cfg.objectives.tasks.items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ConfigError(f"objectives.tasks.{task}.kind: missing required key")
        head = spec.get("head", task)
        if head not in cfg.pool.experts:
            raise ConfigError(
                f"objectives.tasks.{task}: no expert named '{head}' in pool.experts "
                f"({', '.join(cfg.pool.experts)}); set its 'head' to one of them"
            )
    if cfg.objectives.mode == "weighted":
        missing = [t for t in cfg.objectives.tasks if t not in cfg.objectives.weights]
        if missing:
            raise ConfigError(f"objectives.weights: no weight for task(s) {missing}")
    _check_pruning(cfg)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", cfg.name):
        raise ConfigError(f"name: '{cfg.name}' may use only letters, digits, '_', '-', '.'")


def check_device_name(device: str) -> None:
    """``pool.device`` names a device. Whether it exists is checked where the pool loads: the
    driver may have no GPU while its Ray workers do."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"pool.device: '{device}' is not a device; use cpu, cuda or cuda:N")


def _check_pruning(cfg: ExperimentConfig) -> None:
    p = cfg.pruning
    if p.pruner == "none":
        return
    if not p.rungs:
        raise ConfigError("pruning.rungs: at least one fraction in (0, 1) is needed")
    for i, f in enumerate(p.rungs):
        if not 0.0 < f < 1.0 or (i and f <= p.rungs[i - 1]):
            raise ConfigError(
                f"pruning.rungs[{i}]: {f!r}; rungs are increasing fractions in (0, 1) of each "
                "task's subset (the full subset is the last rung)"
            )
    if p.startup_trials < 0:
        raise ConfigError("pruning.startup_trials: must be 0 or more")
    if p.reduction < 2:
        raise ConfigError("pruning.reduction: must be at least 2")
    if p.margin < 0:
        raise ConfigError("pruning.margin: must be 0 or more")
    if p.window and p.window < p.reduction:
        raise ConfigError(
            f"pruning.window: {p.window} trials cannot rank the best 1/{p.reduction} of them; "
            "give 0 (every trial) or at least pruning.reduction"
        )
    if not 0.5 <= p.confidence < 1.0:
        raise ConfigError(
            f"pruning.confidence: {p.confidence!r}; give a probability in [0.5, 1) (0.9: prune "
            "when a trial has under 10% chance of matching the best)"
        )
    if p.pruner == "paired" and cfg.objectives.mode not in ("mean", "weighted"):
        raise ConfigError(
            f"pruning.pruner: 'paired' sums per-example differences, which objectives.mode "
            f"'{cfg.objectives.mode}' does not; use mode mean or weighted, or another pruner"
        )
    if p.order == "contentious" and p.pruner != "paired":
        raise ConfigError(
            f"pruning.order: 'contentious' gives each trial its own example order, which only "
            f"the 'paired' pruner compares (not '{p.pruner}'); use pruning.order: seeded"
        )
    if cfg.objectives.mode == "pareto":
        raise ConfigError(
            "pruning.pruner: pruners compare one value; objectives.mode 'pareto' cannot be "
            "pruned (use mode: mean/weighted/min, or pruning.pruner: none)"
        )
    if cfg.executor.kind == "tune":
        raise ConfigError(
            "pruning.pruner: executor.kind 'tune' runs its own trial loop; prune with "
            "executor.kind ray or inline"
        )


def parse_config(data: Any, *, default_name: str = "study") -> ExperimentConfig:
    """Validate a config mapping (after overrides) into an :class:`ExperimentConfig`."""
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": default_name}
    cfg = _build(ExperimentConfig, data, "")
    _check(cfg)
    return cfg


# -- files and overrides ---------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML file, with one-line errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"config: no such file '{p}'")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config: '{p}'{where} is not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: '{p}' must hold a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}': empty key segment")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: not a mapping, cannot override")
            node = nxt
        node[parts[-1]] = value
    return out


_ZOO = re.compile(r"\$\{zoo:([A-Za-z0-9_\-]+)\}")


def resolve_strings(data: Any, *, build_zoo: bool = True) -> Any:
    """Replace ``${zoo:NAME}`` (building the zoo if needed) and expand ``~`` in every string."""
    if isinstance(data, dict):
        return {k: resolve_strings(v, build_zoo=build_zoo) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_strings(v, build_zoo=build_zoo) for v in data]
    if isinstance(data, str):
        if "${zoo:" in data:
            from mergesweep.zoo import ensure_zoo, zoo_dir

            def sub(m: re.Match) -> str:
                name = m.group(1)
                return str(ensure_zoo(name) if build_zoo else zoo_dir(name))

            data = _ZOO.sub(sub, data)
        if data.startswith("~"):
            data = str(Path(data).expanduser())
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment file (``${zoo:...}`` is left unresolved)."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_config(data, default_name=Path(path).stem)
