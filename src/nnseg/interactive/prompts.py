"""Checks and rasterisation of prompts: points, boxes, masks (scribble, lasso, initial mask), and the image.

Every bad prompt is refused with a ValueError that shows the value and the image shape (the server answers 400 with
the message). Rasterisation follows nnInteractive 2.6.0 (docs/INTERACTIVE.md, "Prompts").
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from nnseg.interactive.ops import Box, nonzero_box, point_stamp, slicer, to_local


def check_image(image: np.ndarray, *, channels: int) -> None:
    """Raise ValueError unless ``image`` is a 4D array ``[c, x, y, z]`` of ``channels`` channels of real numbers (the
    checks that need no copy of the image)."""
    if not isinstance(image, np.ndarray) or image.ndim != 4:
        raise ValueError(f"the image must be a 4D array [c, x, y, z], got {getattr(image, 'shape', type(image))}; "
                         "add the channel axis with image[None]")
    if image.shape[0] != channels or image.dtype.kind not in "biuf":
        raise ValueError(f"the model takes {channels} image channel(s) of real numbers, got shape {image.shape} "
                         f"of {image.dtype}")


def normalise_image(image: np.ndarray, *, channels: int) -> torch.Tensor:
    """The image as float32 ``[c, x, y, z]``, z-scored with channel 0's mean and standard deviation inside the box
    of non-zero voxels (a copy: the caller's array is never changed).

    Raises:
        ValueError: not a 4D array with ``channels`` channels, non-finite values, all zero, or constant.
    """
    check_image(image, channels=channels)
    array = np.array(image, dtype=np.float32, copy=True)
    if not np.isfinite(array).all():
        raise ValueError("the image holds NaN or infinite values; replace them before segmenting")
    tensor = torch.from_numpy(array)
    box = nonzero_box(tensor)
    if box is None:
        raise ValueError(f"the image of shape {image.shape} is entirely zero; nothing to segment")
    crop = tensor[(slice(0, 1), *slicer(box))]
    mean, std = crop.mean(), crop.std()
    if not float(std) > 0:
        raise ValueError("the image is constant inside its non-zero region; nothing to segment")
    tensor -= mean
    tensor /= std
    return tensor


def _numbers(values: object, count: int, what: str) -> list[float]:
    items = list(values) if isinstance(values, (list, tuple, np.ndarray)) else None
    if items is None or len(items) != count or not all(isinstance(v, numbers.Real) and np.isfinite(v) for v in items):
        raise ValueError(f"{what} must be {count} finite numbers, got {values!r}")
    return [float(v) for v in items]


def check_point(coordinates: Sequence[float], shape: Sequence[int]) -> list[int]:
    """Rounded voxel coordinates of a click, inside the image.

    Raises:
        ValueError: not 3 finite numbers, or outside the image.
    """
    point = [round(v) for v in _numbers(coordinates, 3, "a point")]
    if any(not 0 <= p < s for p, s in zip(point, shape)):
        raise ValueError(f"the point {list(coordinates)} lies outside the image of shape {list(shape)}")
    return point


def point_region(point: Sequence[int], radius: object, shape: Sequence[int],
                 intensity: float) -> tuple[Box | None, torch.Tensor]:
    """The region a point prompt writes and its values (the distance-transformed ball times ``intensity``)."""
    if not isinstance(radius, numbers.Real) or radius <= 0:
        raise ValueError(f"point_radius must be a positive number (inference_info.json), got {radius!r}")
    stamp = point_stamp((radius, radius, radius))
    if intensity != 1.0:
        stamp = stamp * intensity
    box = [[p - n // 2, p + n // 2 + n % 2] for p, n in zip(point, stamp.shape)]
    valid = [[max(0, lo), min(s, hi)] for (lo, hi), s in zip(box, shape)]
    if any(hi <= lo for lo, hi in valid):
        return None, stamp
    return valid, stamp[slicer(to_local(valid, box))]


def box_prompt(coords: Sequence[Sequence[float]], shape: Sequence[int], *, bbox3d: bool,
               bbox2d: bool) -> tuple[str, Box]:
    """The kind (``bbox2d``/``bbox3d``) and the rounded box clipped to the image (at least one voxel per axis).

    Raises:
        ValueError: not 3 pairs of numbers, zero size along an axis, no overlap with the image, or a 3D box for a
            model without 3D boxes.
    """
    if not isinstance(coords, (list, tuple, np.ndarray)) or len(coords) != 3:
        raise ValueError(f"a box must be [[x0, x1], [y0, y1], [z0, z1]], got {coords!r}")
    raw = [_numbers(pair, 2, "each box axis") for pair in coords]
    sizes = [hi - lo for lo, hi in raw]
    if any(s == 0 for s in sizes):
        raise ValueError(f"the box {raw} has zero size along an axis")
    if any(hi <= 0 or lo >= s for (lo, hi), s in zip(raw, shape)):
        raise ValueError(f"the box {raw} lies outside the image of shape {list(shape)}")
    flat_axes = sum(s == 1 for s in sizes)
    if flat_axes == 0 and not bbox3d:
        raise ValueError(f"the box {raw} is 3D (size {sizes}); this model takes 2D boxes only (size 1 along an axis)")
    kind = "bbox2d" if flat_axes >= 1 and bbox2d else "bbox3d"
    box = []
    for (lo, hi), s in zip(raw, shape):
        lo, hi = max(0, round(lo)), min(int(s), round(hi))
        if hi <= lo:
            lo, hi = (0, min(1, int(s))) if lo == 0 else (max(lo - 1, 0), hi)
        box.append([lo, hi])
    return kind, box


def queue_entry_for_box(box: Box, patch_size: Sequence[int]) -> tuple[list[int], float]:
    """Prediction centre and zoom-out for a prompt covering ``box``: the patch must see the box plus a third of a
    patch of context."""
    centre = [round((lo + hi) / 2) for lo, hi in box]
    requested = [(hi - lo) + p // 3 for (lo, hi), p in zip(box, patch_size)]
    return centre, max(1, max(r / p for r, p in zip(requested, patch_size)))


def check_mask_prompt(mask: np.ndarray, box: Sequence[Sequence[int]], shape: Sequence[int]) -> np.ndarray:
    """A mask prompt checked against its box (in the image) and the box against the image.

    Raises:
        ValueError: not a 3D bool/number array, box not 3 integer pairs inside the image, or shapes differ.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 3 or mask.dtype.kind not in "biuf":
        raise ValueError(f"a mask prompt must be a 3D bool or number array, got {getattr(mask, 'shape', type(mask))} "
                         f"{getattr(mask, 'dtype', '')}")
    ok = isinstance(box, (list, tuple)) and len(box) == 3 and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, numbers.Integral) for v in p) for p in box)
    if not ok:
        raise ValueError(f"interaction_bbox must be [[x0, x1], [y0, y1], [z0, z1]] of integers, got {box!r}")
    sizes = [hi - lo for lo, hi in box]
    if any(s <= 0 for s in sizes) or any(lo < 0 or hi > s for (lo, hi), s in zip(box, shape)):
        raise ValueError(f"interaction_bbox {list(box)} must have positive sizes and lie inside the image of shape "
                         f"{list(shape)}")
    if list(mask.shape) != sizes:
        raise ValueError(f"the mask has shape {list(mask.shape)} but its box {list(box)} has size {sizes} "
                         f"(the image is {list(shape)})")
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise ValueError("the mask holds NaN or infinite values")
    return mask
