"""From :class:`~nnseg.interactive.refine.prompt_file.Prompt` (voxels or world millimetres) to the arguments of the
session's ``add_*_interaction`` calls on the image's voxel grid ``(i, j, k)``.

World coordinates go through the image's geometry (origin, direction, spacing; LPS as ITK, RAS with x and y
negated). A scribble given as a polyline is drawn with the model's ``preferred_scribble_thickness`` along each axis (rounded
up to an odd width so the stroke is centred; nnInteractive's default [2, 2, 2] gives 3 voxels); for a stroke of
another shape give a mask file. A lasso is a closed polygon on one slice, filled (even-odd rule,
its outline included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnseg._types import Geometry
from nnseg.interactive.refine.prompt_file import Prompt

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SessionPrompt:
    """One session call: ``point`` (coordinates), ``box`` (half-open box), ``scribble``/``lasso`` (a mask inside
    ``bbox``)."""

    kind: str
    positive: bool
    coordinates: tuple[float, ...] | None = None
    bbox: tuple[tuple[int, int], ...] | None = None
    mask: np.ndarray | None = None


def voxel_to_lps(geometry: Geometry) -> np.ndarray | None:
    """The 4x4 matrix from voxel indices ``(i, j, k)`` of the file to LPS millimetres, or None without a geometry."""
    matrix = np.eye(4)
    if geometry.sitk_spacing is not None and len(geometry.sitk_spacing) >= 3 and geometry.direction is not None:
        n = len(geometry.sitk_spacing)
        direction = np.asarray(geometry.direction, dtype=np.float64).reshape(n, n)[:3, :3]
        matrix[:3, :3] = direction @ np.diag(np.asarray(geometry.sitk_spacing[:3], dtype=np.float64))
        matrix[:3, 3] = np.asarray(geometry.origin or (0.0, 0.0, 0.0), dtype=np.float64)[:3]
        return matrix
    if geometry.affine is not None:
        matrix[:3] = np.asarray(geometry.affine, dtype=np.float64)[:3]
        matrix[:3] = np.diag([-1.0, -1.0, 1.0]) @ matrix[:3]
        return matrix
    return None


def to_voxels(prompt: Prompt, lps_from_voxel: np.ndarray | None, *, what: str) -> np.ndarray:
    """The prompt's points as float voxel indices ``(n, 3)``."""
    points = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 3)
    if prompt.space == "voxel":
        return points
    if lps_from_voxel is None:
        raise ValueError(f"{what}: world coordinates ({prompt.space}) need an image with a geometry header (NIfTI, "
                         "NRRD, MHA); give voxel coordinates instead")
    lps = points @ LPS_FROM_RAS.T if prompt.space == "ras" else points
    inverse = np.linalg.inv(lps_from_voxel)
    return lps @ inverse[:3, :3].T + inverse[:3, 3]


def _inside(voxels: np.ndarray, shape: Sequence[int], what: str) -> np.ndarray:
    rounded = np.floor(voxels + 0.5).astype(np.int64)
    outside = [list(map(float, np.round(v, 2))) for v, r in zip(voxels, rounded)
               if any(not 0 <= x < s for x, s in zip(r, shape))]
    if outside:
        raise ValueError(f"{what}: voxel(s) {outside} lie outside the image of shape {list(shape)} (voxel indices "
                         "i, j, k of the image file); check the coordinates and their 'space'")
    return rounded


def _box(prompt: Prompt, voxels: np.ndarray, shape: Sequence[int], what: str) -> tuple[tuple[int, int], ...]:
    if prompt.box is not None:
        box = tuple((int(math.floor(lo + 0.5)), int(math.floor(hi + 0.5))) for lo, hi in prompt.box)
    else:
        corners = _inside(voxels, shape, what)
        box = tuple((int(lo), int(hi) + 1) for lo, hi in zip(corners.min(axis=0), corners.max(axis=0)))
    if any(hi <= 0 or lo >= s or hi <= lo for (lo, hi), s in zip(box, shape)):
        raise ValueError(f"{what}: the box {[list(b) for b in box]} does not overlap the image of shape {list(shape)}")
    return box


def _polyline(voxels: np.ndarray) -> np.ndarray:
    """Voxels along the polyline through ``voxels`` (rounded), each once."""
    if len(voxels) == 1:
        return np.floor(voxels + 0.5).astype(np.int64)
    parts = []
    for a, b in zip(voxels[:-1], voxels[1:]):
        steps = int(math.ceil(np.abs(b - a).max() * 2)) + 1
        parts.append(a + np.linspace(0.0, 1.0, steps)[:, None] * (b - a))
    return np.unique(np.floor(np.concatenate(parts) + 0.5).astype(np.int64), axis=0)


def _stamp(voxels: np.ndarray, widths: Sequence[int], shape: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """A mask (in its bounding box) with a ``widths`` box around every voxel, clipped to the image."""
    half = np.asarray([w // 2 for w in widths])
    lo = np.maximum(voxels.min(axis=0) - half, 0)
    hi = np.minimum(voxels.max(axis=0) + half + 1, np.asarray(shape))
    mask = np.zeros(tuple(int(h - l) for l, h in zip(lo, hi)), dtype=np.uint8)
    offsets = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    for off in offsets:
        at = voxels + off - lo
        keep = np.all((at >= 0) & (at < mask.shape), axis=1)
        mask[tuple(at[keep].T)] = 1
    return tuple((int(l), int(h)) for l, h in zip(lo, hi)), mask


def scribble_mask(voxels: np.ndarray, thickness: Sequence[float],
                  shape: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """The stroke of a polyline: ``thickness`` per axis, rounded up to an odd width (at least 1)."""
    widths = [max(1, int(math.ceil(t))) | 1 for t in thickness]
    return _stamp(_polyline(voxels), widths, shape)


def lasso_mask(voxels: np.ndarray, shape: Sequence[int], *, what: str) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """The filled polygon (even-odd rule, outline included) on the one slice all its points lie on."""
    rounded = np.floor(voxels + 0.5).astype(np.int64)
    flat = [d for d in range(3) if np.all(rounded[:, d] == rounded[0, d])]
    if len(flat) != 1:
        raise ValueError(f"{what}: a lasso is a polygon on one slice; its points must share exactly one voxel "
                         f"coordinate (they share {len(flat)} axes)")
    axis = flat[0]
    u, v = [d for d in range(3) if d != axis]
    box, mask = _stamp(_polyline(np.vstack([voxels, voxels[:1]])), [1, 1, 1], shape)
    gu, gv = np.meshgrid(np.arange(*box[u]), np.arange(*box[v]), indexing="ij")
    pu, pv = voxels[:, u], voxels[:, v]
    inside = np.zeros(gu.shape, dtype=bool)
    for a in range(len(voxels)):
        b = (a + 1) % len(voxels)
        crosses = (pv[a] > gv) != (pv[b] > gv)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = pu[a] + (gv - pv[a]) * (pu[b] - pu[a]) / (pv[b] - pv[a])
        inside ^= crosses & (gu < at)
    index = [slice(None)] * 3
    index[axis] = 0
    mask[tuple(index)] |= inside.astype(np.uint8)
    return box, mask


def session_prompt(prompt: Prompt, *, shape: Sequence[int], lps_from_voxel: np.ndarray | None,
                   scribble_thickness: Sequence[float], mask: np.ndarray | None, what: str) -> SessionPrompt:
    """The session call of one prompt (``mask``: the prompt's mask file, already read onto the image's grid)."""
    if mask is not None:
        if not mask.any():
            raise ValueError(f"{what}: the mask {prompt.mask} has no non-zero voxel")
        full = tuple((0, int(s)) for s in shape)
        return SessionPrompt(prompt.kind, prompt.positive, bbox=full, mask=(mask != 0).astype(np.uint8))
    voxels = to_voxels(prompt, lps_from_voxel, what=what) if prompt.points else np.zeros((0, 3))
    if prompt.kind == "point":
        return SessionPrompt("point", prompt.positive, coordinates=tuple(float(v) for v in _inside(voxels, shape, what)[0]))
    if prompt.kind == "box":
        return SessionPrompt("box", prompt.positive, bbox=_box(prompt, voxels, shape, what))
    _inside(voxels, shape, what)
    if prompt.kind == "scribble":
        box, stroke = scribble_mask(voxels, scribble_thickness, shape)
    else:
        box, stroke = lasso_mask(voxels, shape, what=what)
    return SessionPrompt(prompt.kind, prompt.positive, bbox=box, mask=stroke)
