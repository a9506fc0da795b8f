"""The model pool: base θ₀, experts θₖ and their task vectors τₖ = θₖ − θ₀, resident.

Two halves:

* :func:`read_layout` reads names, shapes and dtypes from file headers only (the driver uses it
  to build spaces and fingerprints without loading a tensor);
* :class:`ModelPool` loads everything once per worker: θ₀ and the live merged weights as flat
  buffers, τ as one ``(N, P)`` buffer in the chosen dtype, and one model per task whose merged
  parameters are *views* into the live buffer, so a merge writes every task model at once and
  each task keeps its own head.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mergesweep.config import check_device_name
from mergesweep.errors import ConfigError, PoolError
from mergesweep.weights import TensorInfo, content_hash, read_infos, read_tensors

__all__ = ["ModelPool", "PoolLayout", "PoolSpec", "TensorModule", "read_layout"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FLOATS = {"float32", "float16", "bfloat16", "float64"}


@dataclass(frozen=True)
class PoolSpec:
    """What to load: a base, named experts (task name → path) and which tensors are merged.

    ``include``/``exclude`` are regular expressions matched against the whole tensor name
    (``re.fullmatch``); with no ``include`` every floating-point tensor of the base is merged.
    Tensors not merged stay per task (each task's model keeps its expert's value: its head).
    """

    base: str
    experts: dict[str, str]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    dtype: str = "float32"
    device: str = "cpu"
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if not self.experts:
            raise ConfigError("pool.experts: at least one expert is needed")
        if self.dtype not in _DTYPES:
            raise ConfigError(
                f"pool.dtype: unknown dtype '{self.dtype}'; choose one of {', '.join(_DTYPES)}"
            )
        for i, pat in enumerate((*self.include, *self.exclude)):
            try:
                re.compile(pat)
            except re.error as exc:
                raise ConfigError(f"pool.include/exclude[{i}]: bad regex '{pat}': {exc}") from None


@dataclass(frozen=True)
class PoolLayout:
    """The merged tensors of a pool, in buffer order, and the expert (task) names."""

    experts: tuple[str, ...]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    fingerprint: str
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        offs, total = [], 0
        for shape in self.shapes:
            offs.append(total)
            n = 1
            for s in shape:
                n *= s
            total += n
        object.__setattr__(self, "offsets", (*offs, total))

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def num_tensors(self) -> int:
        return len(self.names)

    @property
    def num_params(self) -> int:
        return self.offsets[-1]

    def numel(self, i: int) -> int:
        return self.offsets[i + 1] - self.offsets[i]


def _select(infos: dict[str, TensorInfo], spec: PoolSpec) -> list[str]:
    names = [n for n, info in infos.items() if info.dtype in _FLOATS]
    for i, pat in enumerate(spec.include):
        if not any(re.fullmatch(pat, n) for n in names):
            raise PoolError(f"pool.include[{i}]: pattern '{pat}' selects no tensor of the base")
    if spec.include:
        names = [n for n in names if any(re.fullmatch(p, n) for p in spec.include)]
    names = [n for n in names if not any(re.fullmatch(p, n) for p in spec.exclude)]
    if not names:
        raise PoolError("pool.include/exclude: the selection leaves no tensor to merge")
    return names


def _infos(path: str, *, key: str, trust_pickle: bool) -> dict[str, TensorInfo]:
    """Tensor metadata under the names the live model uses.

    For HF folders that is the model's own state-dict naming (transformers 5 renames checkpoint
    keys at load time), read from the architecture built on the meta device: no weights load.
    """
    if _is_hf_folder(path):
        import transformers

        config = transformers.AutoConfig.from_pretrained(path)
        cls = _model_class(config)
        with torch.device("meta"):
            model = cls(config)
        # from_pretrained loads in the checkpoint's dtype; the meta model must report the same.
        dtype = _config_dtype(config)
        if dtype is not None:
            model.to(dtype)
        return {
            n: TensorInfo(n, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for n, t in _named_slots(model).items()
        }
    return read_infos(path, key=key, trust_pickle=trust_pickle)


def read_layout(spec: PoolSpec) -> PoolLayout:
    """Check that base and experts fit and return the layout, without loading weights."""
    base = _infos(spec.base, key="pool.base", trust_pickle=spec.trust_pickle)
    names = _select(base, spec)
    hashes = [content_hash(spec.base, key="pool.base")]
    for task, path in spec.experts.items():
        key = f"pool.experts.{task}"
        infos = _infos(path, key=key, trust_pickle=spec.trust_pickle)
        for n in names:
            if n not in infos:
                raise PoolError(f"{key}: tensor '{n}' of the base is missing in '{path}'")
            b, e = base[n], infos[n]
            if b.shape != e.shape:
                raise PoolError(
                    f"{key}: tensor '{n}' has shape {list(e.shape)} in '{path}' "
                    f"but {list(b.shape)} in the base"
                )
            if b.dtype != e.dtype:
                raise PoolError(
                    f"{key}: tensor '{n}' has dtype {e.dtype} in '{path}' but {b.dtype} in the base"
                )
        hashes.append(content_hash(path, key=key))
    digest = hashlib.sha256(
        json.dumps([hashes, list(spec.experts), names, spec.dtype]).encode()
    ).hexdigest()[:16]
    return PoolLayout(
        experts=tuple(spec.experts),
        names=tuple(names),
        shapes=tuple(base[n].shape for n in names),
        fingerprint=digest,
    )


class TensorModule(nn.Module):
    """A bare module holding named tensors, for pools given as weight files without a model."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._names = list(tensors)
        self.params = nn.ParameterDict(
            {n.replace(".", "__"): nn.Parameter(t, requires_grad=False) for n, t in tensors.items()}
        )

    def tensor(self, name: str) -> torch.Tensor:
        return self.params[name.replace(".", "__")]

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {n: self.tensor(n) for n in self._names}


def _is_hf_folder(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _config_dtype(config) -> torch.dtype | None:
    """The floating dtype a HF folder's weights are stored in (``config.dtype``), if known."""
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _model_class(config) -> type:
    import transformers

    arch = (getattr(config, "architectures", None) or ["AutoModel"])[0]
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise PoolError(f"pool: architecture '{arch}' is not in this transformers version")
    return cls


def _load_hf_model(path: str) -> nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    model = _model_class(config).from_pretrained(path)
    model.eval()
    return model


def _named_slots(model: nn.Module) -> dict[str, torch.Tensor]:
    """Persistent parameters and buffers by state-dict name; tied tensors once, first name."""
    if isinstance(model, TensorModule):
        return model.named_tensors()
    slots: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for n, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            slots[n] = t
    return slots


def _usable_device(name: str) -> torch.device:
    """``pool.device`` as a torch device this process can allocate on (checked where the
    pool loads: a CPU-only driver may hand GPU work to Ray workers)."""
    check_device_name(name)
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"pool.device: '{name}' but this process sees no CUDA device (torch "
                f"{torch.__version__}); use pool.device=cpu, or give Ray workers a GPU with "
                "executor.num_gpus"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f"pool.device: '{name}' but this process sees {count} GPU(s)")
    return device


class ModelPool:
    """Base, experts, task vectors and live task models, loaded once and kept resident.

    Attributes:
        base: ``(P,)`` θ₀ of the merged tensors, flat, in the base's dtype.
        tau: ``(N, P)`` task vectors τₖ = θₖ − θ₀ in ``spec.dtype``.
        live: ``(P,)`` the merged weights every task model's merged tensors are views of.
        tau_owner: ``None``, or the method that rewrote :attr:`tau` in place (e.g. DARE's
            masks); such a pool belongs to that method and is not reused by another one.
    """

    def __init__(self, spec: PoolSpec, layout: PoolLayout | None = None) -> None:
        self.spec = spec
        self.layout = layout or read_layout(spec)
        self.device = _usable_device(spec.device)
        self.tau_dtype = _DTYPES[spec.dtype]
        names = list(self.layout.names)
        if _is_hf_folder(spec.base):
            base = {n: t.detach() for n, t in _named_slots(_load_hf_model(spec.base)).items()}
        else:
            base = read_tensors(spec.base, names, key="pool.base", trust_pickle=spec.trust_pickle)
        dtype = base[names[0]].dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        P, N = self.layout.num_params, self.layout.num_experts
        self.base = torch.empty(P, dtype=dtype, device=self.device)
        self.live = torch.empty(P, dtype=dtype, device=self.device)
        self.tau = torch.empty((N, P), dtype=self.tau_dtype, device=self.device)
        for i, n in enumerate(names):
            self.flat_view(self.base, i).copy_(base[n])
        del base
        # Set by a method that rewrites ``tau`` in place (DARE): the pool then belongs to it.
        self.tau_owner: str | None = None
        self.models: dict[str, nn.Module] = {}
        for k, (task, path) in enumerate(spec.experts.items()):
            key = f"pool.experts.{task}"
            model = self._load_model(path, key)
            slots = _named_slots(model)
            for i, n in enumerate(names):
                if n not in slots:
                    raise PoolError(f"{key}: the model in '{path}' has no tensor '{n}'")
                # τₖ in float32 first, then stored in the chosen dtype.
                diff = slots[n].detach().to(self.device, torch.float32) - self.flat_view(
                    self.base, i
                ).to(torch.float32)
                self.flat_view(self.tau[k], i).copy_(diff)
            model.to(self.device)
            self._share(model, key, path)
            self.models[task] = model
        self.reset()

    # -- loading ---------------------------------------------------------------------------
    def _load_model(self, path: str, key: str) -> nn.Module:
        if _is_hf_folder(path):
            return _load_hf_model(path)
        tensors = read_tensors(path, key=key, trust_pickle=self.spec.trust_pickle)
        if _is_hf_folder(self.spec.base):
            model = _load_hf_model(self.spec.base)
            model.load_state_dict(tensors, strict=False)
            return model
        return TensorModule(tensors)

    def _share(self, model: nn.Module, key: str, path: str) -> None:
        """Point the model's merged tensors at views of the live buffer (tied stay tied)."""
        slots = _named_slots(model)
        for i, n in enumerate(self.layout.names):
            slot = slots[n]
            if slot.dtype != self.live.dtype:
                raise PoolError(
                    f"{key}: tensor '{n}' is {str(slot.dtype).removeprefix('torch.')} in "
                    f"'{path}' but {str(self.live.dtype).removeprefix('torch.')} in the base"
                )
            slot.data = self.flat_view(self.live, i)

    # -- buffers ---------------------------------------------------------------------------
    def flat_view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        """Tensor ``i`` of the layout as a shaped view into a flat buffer of length P."""
        a, b = self.layout.offsets[i], self.layout.offsets[i + 1]
        return flat[a:b].view(self.layout.shapes[i])

    def tensors(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every merged tensor as a shaped view into ``flat``, by name."""
        return {n: self.flat_view(flat, i) for i, n in enumerate(self.layout.names)}

    def reset(self) -> None:
        """Write θ₀ into the live weights."""
        self.live.copy_(self.base)

    @property
    def experts(self) -> Sequence[str]:
        return self.layout.experts

    def model(self, task: str) -> nn.Module:
        """The live model of ``task`` (merged tensors shared, its own head)."""
        return self.models[task]

    def merged_tensors(self, task: str) -> list[torch.Tensor]:
        """The merged parameters (or buffers) of ``task``'s model in layout order.

        These are the model's own objects (``nn.Parameter`` where the model has one), whose data
        are views of :attr:`live`; gradient methods (Fisher) differentiate with respect to them.
        """
        slots = _named_slots(self.models[task])
        return [slots[n] for n in self.layout.names]

    def expert_state(self, k: int) -> dict[str, torch.Tensor]:
        """θₖ of the merged tensors as fresh tensors (for tests and Fisher)."""
        return {
            n: (self.flat_view(self.base, i).float() + self.flat_view(self.tau[k], i).float()).to(
                self.live.dtype
            )
            for i, n in enumerate(self.layout.names)
        }
