"""MergePlan: per-tensor, per-expert coefficients (and densities) for one trial."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mergesweep.errors import SpaceError

__all__ = ["MergePlan", "segments"]


@dataclass
class MergePlan:
    """What one trial merges.

    Attributes:
        coefficients: ``(T, N)`` array: coefficient of expert ``k`` on merged tensor ``t``.
        densities: optional ``(T, N)`` array in ``[0, 1]``: fraction of the largest-magnitude
            entries of τₖ kept on tensor ``t`` (magnitude top-k / TIES trimming); ``None`` means
            the method's own setting.
    """

    coefficients: np.ndarray
    densities: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.coefficients = np.asarray(self.coefficients, dtype=np.float64)
        if self.coefficients.ndim != 2:
            raise SpaceError("plan: coefficients must be a (tensors, experts) array")
        if not np.all(np.isfinite(self.coefficients)):
            raise SpaceError("plan: coefficients must be finite")
        if self.densities is not None:
            self.densities = np.asarray(self.densities, dtype=np.float64)
            if self.densities.shape != self.coefficients.shape:
                raise SpaceError("plan: densities must have the coefficients' shape")
            if np.any(self.densities < 0) or np.any(self.densities > 1):
                raise SpaceError("plan: densities must lie in [0, 1]")

    @classmethod
    def uniform(cls, num_tensors: int, lambdas: list[float] | np.ndarray) -> MergePlan:
        """One coefficient per expert, the same on every tensor (task arithmetic)."""
        lam = np.asarray(lambdas, dtype=np.float64)
        return cls(np.tile(lam, (num_tensors, 1)))

    @property
    def num_tensors(self) -> int:
        return self.coefficients.shape[0]

    @property
    def num_experts(self) -> int:
        return self.coefficients.shape[1]

    def summary(self, experts: list[str] | tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Compact per-expert statistics, small enough for a trial's user attrs."""
        out: dict[str, dict[str, float]] = {}
        for k, name in enumerate(experts):
            col = self.coefficients[:, k]
            entry = {
                "mean": round(float(col.mean()), 6),
                "min": round(float(col.min()), 6),
                "max": round(float(col.max()), 6),
            }
            if self.densities is not None:
                entry["density_mean"] = round(float(self.densities[:, k].mean()), 6)
            out[name] = entry
        return out


def segments(rows: np.ndarray) -> list[tuple[int, int]]:
    """Runs ``[a, b)`` of consecutive tensors whose rows are identical.

    Model-wise plans collapse to one run, so the kernel walks the whole buffer in one sweep.
    """
    runs: list[tuple[int, int]] = []
    start = 0
    for t in range(1, rows.shape[0] + 1):
        if t == rows.shape[0] or not np.array_equal(rows[t], rows[start]):
            runs.append((start, t))
            start = t
    return runs
