"""Group-wise space: one λ per expert per name-regex group (e.g. attention vs MLP)."""

from __future__ import annotations

from typing import Any

from mergesweep.errors import ConfigError
from mergesweep.pool import PoolLayout
from mergesweep.spaces._options import bounds, flag
from mergesweep.spaces.base import GroupedSpace
from mergesweep.spaces.layers import (
    DEFAULT_LAYER_REGEX,
    LAYER_KEY,
    assign_groups,
    group_pairs,
    parse_layers,
)

__all__ = ["GroupWise"]


class GroupWise(GroupedSpace):
    """``lambda.<expert>.<group>`` (or ``lambda.<expert>.<group>.<block>`` with ``per_layer``).

    Each tensor joins the first group whose regex occurs in its name (``re.search``, in the
    order given); tensors no group selects form the group ``rest`` (present only if any). With
    ``per_layer`` every group is split by layer block (``layer<i>``, ``embed``, ``final``,
    ``other``: see :mod:`mergesweep.spaces.layers`), keeping only combinations with tensors.

    Args:
        layout: the pool layout.
        groups: ``{group name: regex}``, e.g. ``{"attn": r"\\.attention\\.", "mlp": r"\\.mlp\\."}``,
            or a list of ``[name, regex]`` pairs (the form :meth:`options` returns).
        per_layer: split each group by layer block.
        low: lower bound of every λ.
        high: upper bound of every λ.
        init: start value of every λ.
        layer_regex: layer-index regex, only with ``per_layer`` (default ``r"\\.(\\d+)\\."``).

    Example:
        >>> from mergesweep.pool import PoolLayout
        >>> names = ("l.0.attention.w", "l.0.mlp.w", "l.0.norm.w")
        >>> layout = PoolLayout(("a",), names, ((1,),) * 3, "fp")
        >>> GroupWise(layout, groups={"attn": "attention", "mlp": "mlp"}).names()
        ['lambda.a.attn', 'lambda.a.mlp', 'lambda.a.rest']
    """

    kind = "groupwise"

    def __init__(
        self,
        layout: PoolLayout,
        *,
        groups: dict[str, str] | list[list[str]],
        per_layer: bool = False,
        low: float = 0.0,
        high: float = 1.0,
        init: float = 0.3,
        layer_regex: str | None = None,
    ) -> None:
        super().__init__(layout)
        self.per_layer = flag(per_layer, "per_layer")
        self.low, self.high, self.init = bounds(low, high, init)
        labels = assign_groups(layout.names, groups)
        self.group_pairs = group_pairs(groups)
        if self.per_layer:
            self.layer_regex = DEFAULT_LAYER_REGEX if layer_regex is None else layer_regex
            blocks = parse_layers(layout.names, self.layer_regex).blocks
            labels = tuple(f"{g}.{b}" for g, b in zip(labels, blocks))
        elif layer_regex is not None:
            raise ConfigError(f"{LAYER_KEY}: only used with per_layer: true")
        else:
            self.layer_regex = None
        self._set_groups(labels, self.low, self.high, self.init)

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            # pairs keep the order (first match wins), which the hash's sorted keys would lose
            "groups": [[g, rx] for g, rx in self.group_pairs],
            "per_layer": self.per_layer,
            "low": self.low,
            "high": self.high,
            "init": self.init,
        }
        if self.per_layer:
            out["layer_regex"] = self.layer_regex
        return out
