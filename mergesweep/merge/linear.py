"""Task arithmetic (linear): θ = θ₀ + Σₖ λₖ τₖ, with per-tensor λ where the plan has them."""

from __future__ import annotations

from mergesweep.merge.base import MergeMethod
from mergesweep.merge.kernels import linear_range
from mergesweep.plan import MergePlan, segments
from mergesweep.pool import ModelPool

__all__ = ["TaskArithmetic", "check_plan"]


def check_plan(pool: ModelPool, plan: MergePlan) -> None:
    """Refuse a plan built for another pool layout."""
    from mergesweep.errors import SpaceError

    want = (pool.layout.num_tensors, pool.layout.num_experts)
    if plan.coefficients.shape != want:
        raise SpaceError(
            f"plan: coefficients have shape {plan.coefficients.shape}, the pool needs {want}"
        )


class TaskArithmetic(MergeMethod):
    """θ = θ₀ + Σₖ λₖ τₖ; consecutive tensors with equal coefficients merge in one sweep."""

    name = "task_arithmetic"

    def apply(self, pool: ModelPool, plan: MergePlan) -> None:
        check_plan(pool, plan)
        rows, offs = plan.coefficients, pool.layout.offsets
        for a, b in segments(rows):
            linear_range(pool.live, pool.base, pool.tau, rows[a], offs[a], offs[b])
