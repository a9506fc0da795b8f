"""A trial's merge as a mergekit configuration, where mergekit can express it.

mergekit merges one model from whole checkpoints with per-model parameters that may vary per
tensor (``[{filter: <substring of the tensor name>, value: v}, ...]``, first match wins). That
expresses any per-tensor coefficient plan of these methods:

======================  ==========================================  ==========================
mergesweep              mergekit                                    equality
======================  ==========================================  ==========================
task_arithmetic/linear  ``task_arithmetic`` (normalize: false)      exact
ties (merge: sum)       ``ties`` (normalize: false), density        exact up to ties in |τ| at
                                                                    the trim threshold
dare_linear             ``dare_linear``, density = 1 − p            in distribution (mergekit
                                                                    draws its own masks)
dare_ties (density 1,   ``dare_ties`` (normalize: false)            in distribution
merge: sum)
======================  ==========================================  ==========================

Not expressible (a note says why): TIES's disjoint *mean* (mergekit's ``normalize`` divides by
the sum of the weights, not by the count of agreeing experts), DARE-TIES with a magnitude trim
after the drop, Fisher, magnitude top-k and LiNeS; pools whose task models keep their own
tensors (classification heads: mergekit makes one model); tensors renamed by transformers
(mergekit reads checkpoint names); pools not given as Hugging Face folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mergesweep.plan import MergePlan

__all__ = ["MergekitResult", "mergekit_config"]


@dataclass
class MergekitResult:
    """The YAML text when mergekit can express the merge, else the reason it cannot."""

    yaml: str | None
    note: str | None
    exact: bool = False


def _method(name: str, options: dict[str, Any]) -> tuple[str | None, str]:
    """(mergekit method, why not) for a mergesweep method and its options."""
    merge = options.get("merge", "mean")
    if name in ("task_arithmetic", "linear"):
        return "task_arithmetic", ""
    if name == "ties":
        if merge != "sum":
            return None, (
                "TIES with merge: mean (the disjoint mean over agreeing experts) has no mergekit "
                "equivalent: mergekit's normalize divides by the sum of the agreeing weights; "
                "use method.options.merge: sum for a study that exports to mergekit"
            )
        return "ties", ""
    if name == "dare_linear":
        return "dare_linear", ""
    if name == "dare_ties":
        if merge != "sum" or float(options.get("density", 0.2)) != 1.0:
            return None, (
                "dare_ties trims by magnitude after the random drop (density < 1) or takes the "
                "disjoint mean; mergekit's dare_ties does neither: use density: 1.0, merge: sum"
            )
        return "dare_ties", ""
    return None, f"mergekit has no equivalent of method '{name}'"


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name


def _filters(names: list[str], prefix: str) -> list[str] | None:
    """Per-tensor filters (names without the base-model prefix, which mergekit's architecture
    files omit), or None when first-match substring lookup would not find each tensor's own."""
    filters = [_strip(n, prefix) for n in names]
    if len(set(filters)) < len(filters):
        return None
    order = sorted(range(len(names)), key=lambda i: (-len(filters[i]), filters[i]))
    for i, name in enumerate(names):
        for candidate in (name, filters[i]):
            first = next(j for j in order if filters[j] in candidate)
            if filters[first] != filters[i]:
                return None
    return filters


def _setting(values: np.ndarray, filters: list[str]) -> Any:
    """A scalar when every tensor has the same value, else first-match conditions, the
    longest filter first (a tensor's own name before any name it contains)."""
    vals = [round(float(v), 10) for v in values]
    if len(set(vals)) == 1:
        return vals[0]
    order = sorted(range(len(filters)), key=lambda i: (-len(filters[i]), filters[i]))
    return [{"filter": filters[i], "value": vals[i]} for i in order]


def mergekit_config(
    *,
    method: str,
    options: dict[str, Any],
    plan: MergePlan,
    names: list[str],
    base: str,
    experts: dict[str, str],
    dtype: str,
    per_task: list[str],
    renamed: list[str],
    prefix: str,
    header: str,
) -> MergekitResult:
    """The mergekit YAML of one trial's plan, or a note saying why mergekit cannot express it.

    Args:
        method, options: the study's merge method and its options.
        plan: the trial's per-tensor, per-expert coefficients (and densities).
        names: the merged tensors, in plan row order.
        base, experts: model folders (absolute paths).
        dtype: the models' floating dtype (``float32``...).
        per_task: tensors each task keeps from its own expert (must be empty).
        renamed: merged tensors whose name is not a checkpoint name (must be empty).
        prefix: the models' base-model prefix (``transformer``, ``bert``...).
        header: a comment placed on top of the YAML.
    """
    import yaml

    mk, why = _method(method, options)
    if mk is None:
        return MergekitResult(None, why)
    if per_task:
        shown = ", ".join(per_task[:4]) + (" ..." if len(per_task) > 4 else "")
        return MergekitResult(
            None,
            f"the task models keep tensors of their own ({shown}); mergekit merges one model "
            "from whole checkpoints. Load the exported folders instead",
        )
    if renamed:
        return MergekitResult(
            None,
            f"transformers renames checkpoint tensors of this architecture (e.g. '{renamed[0]}' "
            "is not a name in the checkpoint), and mergekit reads checkpoint names",
        )
    filters = _filters(names, prefix)
    if filters is None:
        return MergekitResult(None, "tensor names are not distinguishable by mergekit's filters")
    densities = None
    if mk in ("ties", "dare_linear", "dare_ties"):
        if mk == "ties":
            default = float(options.get("density", 0.2))
            densities = (
                plan.densities
                if plan.densities is not None
                else np.full(plan.coefficients.shape, default)
            )
        else:
            keep = 1.0 - float(options.get("p", 0.5))
            densities = np.full(plan.coefficients.shape, keep)
    models = []
    for k, path in enumerate(experts.values()):
        params: dict[str, Any] = {"weight": _setting(plan.coefficients[:, k], filters)}
        if densities is not None:
            params["density"] = _setting(densities[:, k], filters)
        models.append({"model": path, "parameters": params})
    config = {
        "merge_method": mk,
        "base_model": base,
        "dtype": dtype,
        "parameters": {"normalize": False},
        "models": models,
    }
    exact = mk == "task_arithmetic" or mk == "ties"
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return MergekitResult(comment + text, None, exact)
