"""Simulated users for promptable training: an initial prompt on an object, then corrections in its error regions.

Everything works on one sample's patch (numpy, ``(x, y, z)``) and writes the interaction channels ``[n, x, y, z]`` the
network sees, with the session's rasterisation (:mod:`nnseg.interactive.prompts`): points are distance-transformed
balls of ``point_radius``, boxes fill their region, scribbles and lassos are masks in one slice (as a viewer draws
them), the previous mask channel holds the last prediction (or an imperfect mask to refine). As in the session the
newest prompt is 1 and each older one is 0.98 (``interaction_decay``) times its successor.

The kinds follow the nnInteractive paper: an initial prompt of any supported kind (points, a 2D or 3D box, a scribble,
a lasso) or an initial mask, then corrective points or scribbles placed in the current errors (positive where the
object was missed, negative where too much was segmented), usually in the largest error region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnseg.interactive.capabilities import Capabilities
from nnseg.interactive.prompts import point_region
from nnseg.interactive.ops import slicer

INITIAL_KINDS = ("points", "bbox2d", "bbox3d", "scribble", "lasso", "initial_mask")
CORRECTION_KINDS = ("points", "scribble")


@dataclass(frozen=True)
class Layout:
    """Where each prompt goes (from the model's capabilities) and how it is drawn."""

    num_channels: int
    prev_seg: int
    pairs: dict[str, tuple[int, int]]
    kinds: tuple[str, ...]  # the initial kinds the model supports
    point_radius: float = 4
    decay: float = 0.98

    @classmethod
    def from_capabilities(cls, caps: Capabilities) -> "Layout":
        kinds = tuple(k for k in INITIAL_KINDS if k == "initial_mask" and caps.supports_initial_label
                      or k != "initial_mask" and caps.is_supported(k))
        return cls(caps.num_interaction_channels, caps.prev_seg, dict(caps.pairs), kinds, float(caps.point_radius),
                   caps.interaction_decay)


def _weighted_voxel(mask: np.ndarray, rng: np.random.Generator, *, power: float = 1.0) -> tuple[int, ...]:
    """A voxel of ``mask``, drawn with probability growing with its distance to the mask's border (interior first)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    idx = np.flatnonzero(dist)
    weights = dist.ravel()[idx] ** power
    choice = idx[rng.choice(len(idx), p=weights / weights.sum())]
    return tuple(int(v) for v in np.unravel_index(choice, mask.shape))


def centre_voxel(mask: np.ndarray) -> tuple[int, ...]:
    """The voxel of ``mask`` farthest from its border (the image border counts as border); ties: the first."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))


def draw_point(channels: np.ndarray, channel: int, point: tuple[int, ...], radius: float) -> None:
    box, values = point_region(point, radius, channels.shape[1:], 1.0)
    if box is not None:
        region = channels[(channel, *slicer(box))]
        np.maximum(region, values.numpy().astype(channels.dtype), out=region)


def _slice_of(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """An axis and a slice index through ``mask``, the slice drawn with probability ~ the object's area in it."""
    axis = int(rng.integers(3))
    areas = mask.sum(axis=tuple(a for a in range(3) if a != axis)).astype(np.float64)
    return axis, int(rng.choice(len(areas), p=areas / areas.sum()))


def _in_slice(plane: np.ndarray, axis: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    where = [slice(None)] * 3
    where[axis] = index
    out[tuple(where)] = plane
    return out


def _line(plane: np.ndarray, a: tuple[int, ...], b: tuple[int, ...]) -> None:
    n = int(max(abs(p - q) for p, q in zip(a, b))) + 1
    for t in np.linspace(0, 1, n):
        plane[tuple(int(round(p + (q - p) * t)) for p, q in zip(a, b))] = True


def scribble_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scribble on one slice of ``mask``: a stroke through 2-4 interior points (or, a third of the time, part of
    the outline just inside the border), about two voxels wide, kept inside the mask."""
    axis, index = _slice_of(mask, rng)
    plane = np.take(mask, index, axis=axis)
    stroke = np.zeros_like(plane)
    if rng.random() < 1 / 3 and plane.sum() > 20:
        inner = ndimage.binary_erosion(plane, iterations=1)
        ring = inner & ~ndimage.binary_erosion(inner)
        ys, xs = np.nonzero(ring)
        if len(ys):
            angle = np.arctan2(ys - ys.mean(), xs - xs.mean())
            start, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 2.5)
            keep = np.mod(angle - start, 2 * np.pi) < width
            stroke[ys[keep], xs[keep]] = True
    if not stroke.any():
        points = [_weighted_voxel(plane, rng, power=2.0) for _ in range(int(rng.integers(2, 5)))]
        for a, b in zip(points[:-1], points[1:]):
            _line(stroke, a, b)
    stroke = ndimage.binary_dilation(stroke, iterations=int(rng.integers(0, 2))) & plane
    return _in_slice(stroke, axis, index, mask.shape)


def lasso_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A lasso on one slice: the object's cross-section grown by 0-3 voxels, closed and filled."""
    axis, index = _slice_of(mask, rng)
    plane = np.take(mask, index, axis=axis)
    grow = int(rng.integers(0, 4))
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(ndimage.binary_dilation(plane, iterations=grow)
                                                              if grow else plane, iterations=2))
    return _in_slice(filled, axis, index, mask.shape)


def _bbox(mask: np.ndarray) -> list[list[int]]:
    return [[int(i.min()), int(i.max()) + 1] for i in np.nonzero(mask)]


def box_mask(mask: np.ndarray, rng: np.random.Generator, *, flat: bool) -> np.ndarray:
    """A box around the object (3D) or its cross-section in one slice (``flat``), each side 0-2 voxels outside."""
    region = mask
    if flat:
        axis, index = _slice_of(mask, rng)
        region = _in_slice(np.take(mask, index, axis=axis), axis, index, mask.shape)
    out = np.zeros(mask.shape, dtype=bool)
    box = []
    for (lo, hi), size in zip(_bbox(region), mask.shape):
        if hi - lo == 1 and flat:
            box.append([lo, hi])
            continue
        box.append([max(0, lo - int(rng.integers(0, 3))), min(size, hi + int(rng.integers(0, 3)))])
    out[slicer(box)] = True
    return out


def perturbed_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An imperfect segmentation of the object (to refine): eroded, dilated, or with a ball cut out or added."""
    choice = int(rng.integers(4))
    if choice == 0:
        return ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 3)))
    if choice == 1:
        return ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)))
    grid = np.indices(mask.shape)
    centre = _weighted_voxel(mask, rng, power=0.0) if choice == 2 else tuple(int(rng.integers(s)) for s in mask.shape)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= rng.uniform(2, 6) ** 2
    return mask & ~ball if choice == 2 else mask | ball
