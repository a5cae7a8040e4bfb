"""Refinement planning: cover the changed voxels of a coarse prediction with patch-sized boxes.

Greedy set cover on candidate centres taken from a grid over the changed region (each box counts only the voxels
inside it shrunk by ``margin``), finer grids when no grid point lies in the region, and seeded random sampling for
voxels the grid cannot reach: the procedure nnInteractive 2.6.0 uses, so both pick the same boxes for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nnseg.interactive.ops import Box


def _inner_bounds(center: Sequence[int], half: Sequence[int], end: Sequence[int], margin: Sequence[int],
                  shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, c - h + m), min(s, c + e - m)) for c, h, e, m, s in zip(center, half, end, margin, shape))


def _box(center: Sequence[int], half: Sequence[int], end: Sequence[int]) -> Box:
    return [[c - h, c + e] for c, h, e in zip(center, half, end)]


def _candidates(mask: torch.Tensor, stride: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> torch.Tensor:
    ranges = [torch.arange(max(0, lo[d]), min(mask.shape[d], hi[d] + 1), stride[d]) for d in range(3)]
    grid = torch.cartesian_prod(*ranges).reshape(-1, 3)
    return grid[mask[grid[:, 0], grid[:, 1], grid[:, 2]] != 0]


def _greedy(mask: torch.Tensor, centres: torch.Tensor, half, end, margin) -> tuple[list[Box], torch.Tensor]:
    uncovered = mask.clone().to(torch.uint8)
    boxes: list[Box] = []
    while len(centres) > 0 and bool(uncovered.any()):
        listed = centres.tolist()
        bounds = [_inner_bounds(c, half, end, margin, mask.shape) for c in listed]
        counts = [int(uncovered[b].sum()) for b in bounds]
        best = max(range(len(counts)), key=lambda i: (counts[i], -i))
        if counts[best] == 0:
            break
        boxes.append(_box(listed[best], half, end))
        uncovered[bounds[best]] = 0
        centres = centres[uncovered[tuple(centres.T)] > 0]
    return boxes, uncovered


def _sampled(mask: torch.Tensor, half, end, margin, n_samples: int, rng: np.random.RandomState) -> list[Box]:
    mask = mask.clone()
    boxes: list[Box] = []
    while bool(mask.any()):
        indices = torch.nonzero(mask)
        best, best_count, best_bounds = None, 0, None
        for _ in range(n_samples):
            centre = [int(v) for v in indices[rng.choice(len(indices))]]
            bounds = _inner_bounds(centre, half, end, margin, mask.shape)
            count = int(mask[bounds].sum())
            if count > best_count:
                best, best_count, best_bounds = centre, count, bounds
        if best is None:
            raise ValueError(f"cannot cover the changed region: the patch {[h + e for h, e in zip(half, end)]} is not "
                             f"larger than twice the margin {list(margin)}; the model's patch must exceed "
                             f"{[2 * m for m in margin]}")
        boxes.append(_box(best, half, end))
        mask[best_bounds] = 0
    return boxes


def cover_boxes(mask: torch.Tensor, patch_size: Sequence[int], *, rng: np.random.RandomState,
                margin: Sequence[int] = (24, 24, 24), max_depth: int = 3) -> list[Box]:
    """Patch-sized boxes (local to ``mask``) whose margin-shrunk interiors cover every non-zero voxel of ``mask``.

    Args:
        mask: 3D 0/1 tensor on the CPU.
        patch_size: box size per axis.
        rng: draws the leftover-voxel samples (``RandomState.choice``, as nnInteractive's ``np.random.choice``).

    Raises:
        ValueError: the patch is too small for the margin, so nothing can be covered.
    """
    half = [p // 2 for p in patch_size]
    end = [p - h for p, h in zip(patch_size, half)]
    if not bool(mask.any()):
        return []
    nz = torch.nonzero(mask)
    lo, hi = nz.min(0).values.tolist(), nz.max(0).values.tolist()
    stride = [max(1, round((b - a) / 4)) for a, b in zip(lo, hi)]
    for _ in range(max_depth + 1):
        centres = _candidates(mask, stride, lo, hi)
        if len(centres) > 0:
            boxes, uncovered = _greedy(mask, centres, half, end, margin)
            if bool(uncovered.any()):
                boxes += _sampled(uncovered, half, end, margin, 10, rng)
            return boxes
        stride = [max(1, s // 2) for s in stride]
    return _sampled(mask, half, end, margin, 25, rng)
