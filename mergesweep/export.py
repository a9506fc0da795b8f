"""Export a trial's merged model as Hugging Face folders (and a mergekit YAML where it maps).

The trial's point is turned back into its plan by the study's space and merged in a fresh pool
loaded from the study's stored config, so the export does not depend on the process that ran
the trial. What is written under ``DIR``:

* ``DIR/`` itself is the model (``config.json``, ``model.safetensors``, tokenizer files) when
  every task model is the same model: nothing is kept per task, or the per-task tensors are
  equal (e.g. the ``lm`` zoo, where every tensor is merged);
* otherwise ``DIR/<task>/`` per expert: the merged shared tensors plus that task's own tensors
  (its classification head), each a complete folder that ``AutoModel*.from_pretrained`` loads;
* ``DIR/export.json``: study, trial, point, method, the layout above, the trial's metrics and
  the exported models' metrics (``--check``, the default, reloads each folder and scores it
  with the study's objectives);
* ``DIR/mergekit.yaml`` when mergekit can express the merge (:mod:`mergesweep.mergekit`), else
  ``DIR/MERGEKIT.md`` saying why not.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mergesweep.errors import ConfigError, MergesweepError, StorageError
from mergesweep.storage import DEFAULT_STORAGE

__all__ = ["ExportError", "ExportResult", "export_trial"]

_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


class ExportError(MergesweepError, RuntimeError):
    """The exported model does not reproduce the trial's scores."""


@dataclass
class ExportResult:
    """What :func:`export_trial` wrote and measured."""

    out: Path
    layout: str  # "single" or "per_task"
    folders: dict[str, Path]
    trial_metrics: dict[str, float]
    exported_metrics: dict[str, float] = field(default_factory=dict)
    mergekit: Path | None = None
    mergekit_note: str | None = None


def _trial(study: Any, number: int) -> Any:
    from optuna.trial import TrialState

    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise ConfigError(
            f"--trial: study '{study.study_name}' has no trial {number} "
            f"(it has {len(study.trials)} trials, numbered from 0)"
        )
    trial = found[0]
    if trial.state != TrialState.COMPLETE or "metrics" not in trial.user_attrs:
        raise ConfigError(
            f"--trial: trial {number} of '{study.study_name}' is {trial.state.name}, not a "
            "complete trial with metrics"
        )
    return trial


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out: '{out}' exists and is not empty (pass --force to replace)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _float_slots(model: nn.Module) -> dict[str, torch.Tensor]:
    from mergesweep.pool import _named_slots

    return {n: t for n, t in _named_slots(model).items() if t.is_floating_point()}


def _same_models(pool: Any) -> bool:
    """True when every task model holds the same tensors and config (one model to export)."""
    names = set(pool.layout.names)
    models = [pool.model(t) for t in pool.experts]
    first = {n: t for n, t in _float_slots(models[0]).items() if n not in names}
    for other in models[1:]:
        own = {n: t for n, t in _float_slots(other).items() if n not in names}
        if own.keys() != first.keys() or any(not torch.equal(own[n], first[n]) for n in own):
            return False
        cfg_a, cfg_b = getattr(models[0], "config", None), getattr(other, "config", None)
        if cfg_a is not None and cfg_b is not None:
            a, b = cfg_a.to_dict(), cfg_b.to_dict()
            a.pop("_name_or_path", None)
            b.pop("_name_or_path", None)
            if a != b:
                return False
    return True


def _copy_preprocessing(src: list[str], out: Path) -> None:
    """Tokenizer (and image processor) files of the first folder that has them."""
    for folder in src:
        p = Path(folder)
        if p.is_dir() and any((p / f).is_file() for f in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(p)).save_pretrained(str(out))
            break
    for folder in src:
        for name in _PROCESSOR_FILES:
            if (Path(folder) / name).is_file() and not (out / name).exists():
                shutil.copy2(Path(folder) / name, out / name)


def _write_model(pool: Any, task: str, out: Path) -> None:
    """The task's model with the merged weights, as a fresh copy saved by ``save_pretrained``.

    A fresh model is loaded from the expert's folder and the merged values copied into it: the
    live model's tensors are views of one flat buffer, which ``save_pretrained`` would take for
    shared (tied) storage.
    """
    from mergesweep.pool import _is_hf_folder, _named_slots

    path = pool.spec.experts[task]
    out.mkdir(parents=True, exist_ok=True)
    if not _is_hf_folder(path):
        from safetensors.torch import save_file

        tensors = {
            n: t.detach().clone().contiguous() for n, t in _named_slots(pool.model(task)).items()
        }
        save_file(tensors, str(out / "model.safetensors"))
        return
    fresh = type(pool.model(task)).from_pretrained(path)
    slots = _named_slots(fresh)
    with torch.no_grad():
        for name, merged in pool.tensors(pool.live).items():
            slots[name].copy_(merged)
    fresh.save_pretrained(str(out))
    _copy_preprocessing([path, pool.spec.base], out)


def _reload(folder: Path) -> nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    arch = (getattr(config, "architectures", None) or ["AutoModel"])[0]
    model = getattr(transformers, arch).from_pretrained(str(folder))
    model.eval()
    return model


def _mergekit(evaluator: Any, cfg: Any, plan: Any, header: str) -> Any:
    from mergesweep.mergekit import mergekit_config
    from mergesweep.pool import _is_hf_folder
    from mergesweep.weights import read_infos

    pool = evaluator.pool
    spec = pool.spec
    paths = [spec.base, *spec.experts.values()]
    if not all(_is_hf_folder(p) for p in paths):
        from mergesweep.mergekit import MergekitResult

        return MergekitResult(None, "mergekit reads Hugging Face model folders; this pool is not")
    names = list(pool.layout.names)
    merged = set(names)
    per_task = sorted(
        {n for t in pool.experts for n in _float_slots(pool.model(t)) if n not in merged}
    )
    stored = read_infos(spec.base, key="pool.base")
    model = pool.model(pool.experts[0])
    return mergekit_config(
        method=cfg.method.name,
        options=dict(cfg.method.options),
        plan=plan,
        names=names,
        base=str(Path(spec.base).resolve()),
        experts={t: str(Path(p).resolve()) for t, p in spec.experts.items()},
        dtype=str(pool.live.dtype).removeprefix("torch."),
        per_task=per_task,
        renamed=[n for n in names if n not in stored],
        prefix=getattr(model, "base_model_prefix", "") or "",
        header=header,
    )


def export_trial(
    study: str,
    trial: int,
    out: str | Path,
    *,
    storage: str = DEFAULT_STORAGE,
    check: bool = True,
    tolerance: float = 1e-6,
    overwrite: bool = False,
) -> ExportResult:
    """Re-merge trial ``trial`` of ``study`` in a fresh pool and write it under ``out``.

    Args:
        study, trial, storage: which trial (its number as ``mergesweep show`` lists it).
        out: the output folder (must be empty unless ``overwrite``).
        check: reload every written folder and score it with the study's objectives.
        tolerance: the largest difference from the trial's stored metrics ``check`` accepts.
        overwrite: replace a non-empty ``out``.

    Raises:
        ConfigError: no such trial, or it is not complete; ``out`` is not empty.
        ExportError: ``check`` found a metric that differs from the trial's.
    """
    import optuna

    from mergesweep.runtime.worker import Evaluator
    from mergesweep.spaces import build_space
    from mergesweep.storage import open_storage, require_study
    from mergesweep.study import ATTR, stored_config

    st = open_storage(storage)
    require_study(st, study, storage)
    s = optuna.load_study(study_name=study, storage=st)
    if ATTR not in s.user_attrs:
        raise StorageError(f"study '{study}' in '{storage}' was not made by mergesweep")
    t = _trial(s, trial)
    config = stored_config(study, storage)
    out = Path(out).expanduser()
    _prepare_out(out, overwrite)
    threads = torch.get_num_threads()
    try:
        evaluator = Evaluator(config)
        cfg, pool = evaluator.cfg, evaluator.pool
        plan = build_space(cfg.space.kind, pool.layout, cfg.space.options).to_plan(t.params)
        evaluator.method.apply(pool, plan)
        single = _same_models(pool)
        folders = (
            {task: out for task in pool.experts}
            if single
            else {task: out / task for task in pool.experts}
        )
        for task in pool.experts if not single else pool.experts[:1]:
            _write_model(pool, task, folders[task])
        result = ExportResult(
            out, "single" if single else "per_task", folders, dict(t.user_attrs["metrics"])
        )
        header = (
            f"mergesweep export: study '{study}', trial {trial} ({cfg.method.name} over a "
            f"{cfg.space.kind} space)"
        )
        mk = _mergekit(evaluator, cfg, plan, header)
        if mk.yaml is not None:
            result.mergekit = out / "mergekit.yaml"
            result.mergekit.write_text(mk.yaml)
        else:
            result.mergekit_note = mk.note
            (out / "MERGEKIT.md").write_text(
                f"# No mergekit config for this export\n\n{header}.\n\nmergekit cannot express "
                f"this merge: {mk.note}.\n"
            )
        if check:
            result.exported_metrics = _check(evaluator, folders, result.trial_metrics, tolerance)
        _write_manifest(result, study, t, cfg, mk)
    finally:
        torch.set_num_threads(threads)
    return result


def _check(
    evaluator: Any, folders: dict[str, Path], want: dict[str, float], tolerance: float
) -> dict[str, float]:
    """Score every reloaded folder with the study's objectives; refuse a differing metric."""
    reloaded: dict[Path, nn.Module] = {}
    got: dict[str, float] = {}
    for task, obj in evaluator.objectives.items():
        folder = folders[evaluator.heads[task]]
        if folder not in reloaded:
            reloaded[folder] = _reload(folder)
        got[task] = float(obj.evaluate(reloaded[folder]))
    bad = {
        task: (want.get(task), value)
        for task, value in got.items()
        if task not in want or not math.isclose(value, want[task], rel_tol=0, abs_tol=tolerance)
    }
    if bad:
        shown = ", ".join(f"{t}: trial {a} vs exported {b}" for t, (a, b) in bad.items())
        raise ExportError(f"export: the exported model does not reproduce the trial ({shown})")
    return got


def _write_manifest(result: ExportResult, study: str, trial: Any, cfg: Any, mk: Any) -> None:
    manifest = {
        "study": study,
        "trial": trial.number,
        "params": trial.params,
        "method": {"name": cfg.method.name, "options": cfg.method.options},
        "space": {"kind": cfg.space.kind, "options": cfg.space.options},
        "layout": result.layout,
        "folders": {t: str(p.relative_to(result.out)) or "." for t, p in result.folders.items()},
        "trial_metrics": result.trial_metrics,
        "exported_metrics": result.exported_metrics or None,
        "mergekit": "mergekit.yaml" if result.mergekit else None,
        "mergekit_exact": bool(mk.exact) if result.mergekit else None,
        "mergekit_note": result.mergekit_note,
    }
    (result.out / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
