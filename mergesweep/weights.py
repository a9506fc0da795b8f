"""Reading weights and their metadata from HF folders, ``.safetensors`` and torch files.

Only metadata is read where possible (safetensors headers), so the driver can build spaces
without loading a single tensor; workers load the tensors.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mergesweep.errors import MissingFileError, PoolError

__all__ = ["TensorInfo", "content_hash", "read_infos", "read_tensors", "weight_files"]

_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def weight_files(path: str | Path, *, key: str) -> list[Path]:
    """The weight files behind ``path``: a HF folder (sharded or not) or a single file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError(f"{key}: no such file or folder '{p}'")
    if p.is_file():
        if p.suffix == ".safetensors" or p.suffix in _TORCH_SUFFIXES:
            return [p]
        raise PoolError(f"{key}: '{p}' is neither .safetensors nor a torch file (.bin/.pt/.pth)")
    for index in (p / "model.safetensors.index.json", p / "pytorch_model.bin.index.json"):
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (p / s).is_file()]
            if missing:
                raise MissingFileError(f"{key}: shard '{p / missing[0]}' of '{index}' is missing")
            return [p / s for s in shards]
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "*.pt", "*.pth"):
        found = sorted(p.glob(pattern))
        if found:
            return found
    raise MissingFileError(f"{key}: folder '{p}' holds no weights (*.safetensors or *.bin)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _torch_load(path: Path, *, trust_pickle: bool, key: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise PoolError(f"{key}: cannot read '{path}': {_first_line(exc)}") from None
        # torch's refusal is a page of advice with ANSI codes: keep the one line that matters.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise PoolError(
            f"{key}: '{path}' holds pickled objects{what} that a weights-only load refuses; "
            "set pool.trust_pickle: true only for a file you trust"
        ) from None
    except Exception as exc:  # corrupt or truncated files
        raise PoolError(f"{key}: cannot read '{path}': {_first_line(exc)}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PoolError(f"{key}: '{path}' does not hold a state dict of tensors")
    return obj


def read_infos(path: str | Path, *, key: str, trust_pickle: bool = False) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of every tensor behind ``path``, reading headers only."""
    from safetensors import safe_open

    infos: dict[str, TensorInfo] = {}
    for f in weight_files(path, key=key):
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt") as sf:
                    for name in sf.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        sl = sf.get_slice(name)
                        dtype = _SAFE_DTYPES.get(sl.get_dtype(), sl.get_dtype())
                        infos[name] = TensorInfo(name, tuple(sl.get_shape()), dtype)
            except Exception as exc:
                raise PoolError(f"{key}: cannot read '{f}': {exc}") from None
        else:
            for name, t in _torch_load(f, trust_pickle=trust_pickle, key=key).items():
                infos[name] = TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
    return infos


_SAFE_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def read_tensors(
    path: str | Path, names: list[str] | None = None, *, key: str, trust_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Load tensors (all, or only ``names``) behind ``path`` onto the CPU."""
    from safetensors import safe_open

    wanted = None if names is None else set(names)
    out: dict[str, torch.Tensor] = {}
    for f in weight_files(path, key=key):
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():  # noqa: SIM118
                    if wanted is None or name in wanted:
                        out[name] = sf.get_tensor(name)
        else:
            for name, t in _torch_load(f, trust_pickle=trust_pickle, key=key).items():
                if wanted is None or name in wanted:
                    out[name] = t
    return out


def content_hash(path: str | Path, *, key: str) -> str:
    """A fast content fingerprint: size plus 1 MiB samples at start, middle and end of each file.

    Paths are not hashed, so a moved zoo still resumes; any rewrite of the weights changes the
    header or the sampled bytes and therefore the hash.
    """
    h = hashlib.sha256()
    chunk = 1 << 20
    for f in weight_files(path, key=key):
        size = f.stat().st_size
        h.update(f.name.encode() + size.to_bytes(8, "little"))
        with f.open("rb") as fh:
            for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
                fh.seek(offset)
                h.update(fh.read(chunk))
    return h.hexdigest()[:16]
