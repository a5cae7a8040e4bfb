"""Per-axis and per-stage expansion of plans ``arch_kwargs`` values (torch-free: the planner uses them too)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any


def as_dims(value: int | Sequence[int], dim: int) -> list[int]:
    """Expand a scalar kernel size or stride to one entry per spatial axis.

    Args:
        value: int or per-axis sequence.
        dim: number of spatial axes (2 or 3).

    Returns:
        List of `dim` ints.
    """
    if isinstance(value, Integral):
        return [int(value)] * dim
    out = [int(v) for v in value]
    if len(out) != dim:
        raise ValueError(f"expected {dim} values (one per spatial axis), got {list(value)}; fix the plans arch_kwargs")
    return out


def per_item(value: Any, n: int, name: str) -> list[Any]:
    """Expand a scalar to a list of `n` entries, or check that a sequence has `n` entries."""
    if value is None or isinstance(value, Integral):
        return [value if value is None else int(value)] * n
    out = list(value)
    if len(out) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(out)}: {out}; fix the plans arch_kwargs")
    return out
