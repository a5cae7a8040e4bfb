"""The Batch type, the transform protocol and BGContrast-style sampling shared by the transforms."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    """``image`` float ``(B, C, *spatial)``; ``seg`` ``(B, 1, *spatial)`` or regions ``(B, R, *spatial)``, or None."""

    image: torch.Tensor
    seg: torch.Tensor | None = None

    def with_(self, **changes: Any) -> "Batch":
        return replace(self, **changes)

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.image.shape[2:])


class Transform(Protocol):
    def sample(self, rng: np.random.Generator, batch: Batch) -> Any: ...

    def apply(self, batch: Batch, params: Any) -> Batch: ...


def bg_contrast(rng: np.random.Generator, value_range: tuple[float, float], size: int | tuple[int, ...]) -> np.ndarray:
    """batchgenerators' BGContrast sampling: half the draws below 1 (from ``[lo, 1)``), half above (``[1, hi)``)."""
    lo, hi = value_range
    below = rng.random(size) < 0.5
    low_draw = rng.uniform(lo, 1.0, size) if lo < 1 else rng.uniform(lo, hi, size)
    high_draw = rng.uniform(max(lo, 1.0), hi, size)
    return np.where(below & (lo < 1), low_draw, high_draw)


def per_sample_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape ``(B,)`` or ``(B, C)`` values so they broadcast against a ``(B, C, *spatial)`` tensor."""
    return values.reshape(*values.shape, *([1] * (ndim - values.ndim)))


def as_tensor(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype if like.is_floating_point() else torch.float32, device=like.device)
