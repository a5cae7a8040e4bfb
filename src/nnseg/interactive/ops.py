"""Pure tensor helpers of the interactive session: boxes, crops with zero padding, pastes, window filters, points.

Boxes are half-open per axis, ``[[x0, x1], [y0, y1], [z0, z1]]``, and may extend past the array (the part outside is
zero-padded when read and dropped when written).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F

Box = list[list[int]]


def clip_box(box: Sequence[Sequence[int]], shape: Sequence[int]) -> Box | None:
    """``box`` clipped to ``[0, shape)``; None when nothing is left."""
    out = [[max(0, int(lo)), min(int(hi), int(s))] for (lo, hi), s in zip(box, shape)]
    return None if any(hi <= lo for lo, hi in out) else out


def union_box(*boxes: Box | None) -> Box | None:
    valid = [b for b in boxes if b is not None]
    if not valid:
        return None
    return [[min(b[d][0] for b in valid), max(b[d][1] for b in valid)] for d in range(len(valid[0]))]


def to_local(box: Box, frame: Box) -> Box:
    return [[lo - f[0], hi - f[0]] for (lo, hi), f in zip(box, frame)]


def slicer(box: Box) -> tuple[slice, ...]:
    return tuple(slice(int(lo), int(hi)) for lo, hi in box)


def nonzero_box(x: torch.Tensor) -> Box | None:
    """Bounding box of the non-zero voxels over the last three axes (sum projections in float32, as nnInteractive)."""
    lead = tuple(range(x.ndim - 3))
    plane = x.sum(dim=(*lead, x.ndim - 3), dtype=torch.float32)
    projections = (x.sum(dim=(*lead, x.ndim - 2, x.ndim - 1), dtype=torch.float32), plane.sum(dim=1), plane.sum(dim=0))
    box = []
    for p in projections:
        idx = torch.nonzero(p != 0)[:, 0]
        if idx.numel() == 0:
            return None
        box.append([int(idx.min()), int(idx.max()) + 1])
    return box


def crop_padded(source: torch.Tensor, box: Box, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``source[..., box]`` with zeros where ``box`` leaves the array (leading axes kept), into ``out`` if given."""
    spatial = source.shape[-3:]
    if out is None:
        out = torch.zeros((*source.shape[:-3], *[hi - lo for lo, hi in box]), dtype=source.dtype, device=source.device)
    valid = clip_box(box, spatial)
    if valid is not None:
        target = slicer(to_local(valid, box))
        out[(..., *target)] = source[(..., *slicer(valid))].to(out.device, out.dtype)
    return out


def paste(target: torch.Tensor | np.ndarray, source: torch.Tensor, box: Box) -> None:
    """Write ``source`` (shaped like ``box``) into the last three axes of ``target``; parts outside are dropped."""
    valid = clip_box(box, target.shape[-3:])
    if valid is None:
        return
    part = source[slicer(to_local(valid, box))]
    if isinstance(target, np.ndarray):
        target[(..., *slicer(valid))] = part.cpu().numpy()
    else:
        target[(..., *slicer(valid))] = part.to(target.device, target.dtype)


def round_to_nearest_odd(x: float) -> int:
    """The odd integer nearest ``x`` (ceil if odd, else floor if odd, else round + 1)."""
    if x <= 0:
        raise ValueError(f"round_to_nearest_odd needs a positive number, got {x}")
    hi, lo = math.ceil(x), math.floor(x)
    if hi % 2 == 1:
        return hi
    if lo % 2 == 1:
        return lo
    return round(x) + 1


def _window_extreme(x: torch.Tensor, axis: int, k: int, op) -> torch.Tensor:
    r = (k - 1) // 2
    n = x.shape[axis]
    first, last = x.narrow(axis, 0, 1), x.narrow(axis, n - 1, 1)
    acc = torch.cat([first.expand(*[r if d == axis else -1 for d in range(x.ndim)]), x,
                     last.expand(*[r if d == axis else -1 for d in range(x.ndim)])], dim=axis)
    width = 1
    while width < k:
        step = min(width, k - width)
        m = acc.shape[axis] - step
        acc = op(acc.narrow(axis, 0, m), acc.narrow(axis, step, m))
        width += step
    return acc


def window_filter(x: torch.Tensor, k: int, *, minimum: bool = False) -> torch.Tensor:
    """Max (or min) over a ``k``-wide cube clipped to the array, over the last three axes (same shape out).

    Raises:
        ValueError: ``k`` is even.
    """
    if k % 2 != 1:
        raise ValueError(f"window_filter needs an odd width, got {k}")
    if k == 1:
        return x.clone()
    op = torch.minimum if minimum else torch.maximum
    for axis in (x.ndim - 3, x.ndim - 2, x.ndim - 1):
        x = _window_extreme(x, axis, k, op)
    return x


def dilate_nonnegative(x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`window_filter` (max) of an array without negative values, computed only around its non-zero voxels
    (identical result: elsewhere every window holds zeros only)."""
    box = nonzero_box(x)
    if box is None or k == 1:
        return x.clone()
    r = (k - 1) // 2
    region = slicer([[max(0, lo - r), min(s, hi + r)] for (lo, hi), s in zip(box, x.shape[-3:])])
    out = x.clone()
    out[(..., *region)] = window_filter(x[(..., *region)], k)
    return out


@lru_cache(maxsize=8)
def point_stamp(radii: tuple[float, ...]) -> torch.Tensor:
    """A point prompt: the ball of the largest radius resized to ``round(2r + 1)`` per axis, replaced by its
    Euclidean distance transform over its maximum (1 at the centre), float64."""
    from scipy.ndimage import distance_transform_edt

    r = max(radii)
    n = int(abs(2 * r + 1))
    axis = np.linspace(-r, r, n)
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    ball = torch.from_numpy(((xx ** 2 + yy ** 2 + zz ** 2) <= r * r).astype(np.float32))
    shape = [round(2 * ri + 1) for ri in radii]
    if list(ball.shape) != shape:
        ball = F.interpolate(ball[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]
    edt = distance_transform_edt((ball >= 0.5).numpy())
    return torch.from_numpy(edt / edt.max())
