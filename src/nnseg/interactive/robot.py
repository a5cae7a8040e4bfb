"""A robot user for measuring interactive models: one initial prompt per object, then corrective clicks.

The robot clicks the object's centre (the voxel farthest from its border) or draws its 3D bounding box, then clicks
the centre of the largest error region of the current mask: a missed region gets a positive click, an extra region a
negative one. Dice and the seconds of each interaction are recorded. Used by the interactive trainer's final
validation and by ``bench/interactive.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnseg.interactive.session import InteractiveSession

INITIAL_PROMPTS = ("point", "box")


@dataclass(frozen=True)
class RobotRun:
    """Dice after each interaction (``dice[0]``: after the initial prompt) and the seconds each took."""

    dice: list[float]
    seconds: list[float]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def region_centre(mask: np.ndarray) -> tuple[int, ...]:
    """The voxel of ``mask`` farthest from the region's border (the image border counts as border)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))


def largest_error(prediction: np.ndarray, target: np.ndarray) -> tuple[tuple[int, ...], bool] | None:
    """The centre of the largest connected error region and whether it was missed (a positive click) or extra
    (negative); None when the mask is right."""
    best: tuple[int, np.ndarray, bool] | None = None
    for positive, error in ((True, target & ~prediction), (False, prediction & ~target)):
        labels, n = ndimage.label(error)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            i = int(np.argmax(sizes))
            if best is None or sizes[i] > best[0]:
                best = (int(sizes[i]), labels == i + 1, positive)
    return None if best is None else (region_centre(best[1]), best[2])


def _initial(session: InteractiveSession, target: np.ndarray, initial: str) -> None:
    if initial == "point":
        session.add_point_interaction(region_centre(target), include_interaction=True)
    else:
        session.add_bbox_interaction([[int(i.min()), int(i.max()) + 1] for i in np.nonzero(target)],
                                     include_interaction=True)


def run_robot(session: InteractiveSession, image: np.ndarray, target: np.ndarray, *, interactions: int = 10,
              initial: str = "point") -> RobotRun:
    """Segment the object ``target`` (3D bool) of ``image`` (``[c, x, y, z]``) with ``interactions`` prompts.

    Raises:
        ValueError: an empty target, an unknown ``initial`` (``point`` or ``box``), or ``interactions < 1``.
    """
    if initial not in INITIAL_PROMPTS:
        raise ValueError(f"initial prompt {initial!r} is unknown; use one of {list(INITIAL_PROMPTS)}")
    if interactions < 1 or not target.any():
        raise ValueError(f"the robot needs at least one interaction (got {interactions}) and a non-empty object "
                         f"({int(target.sum())} voxels)")
    session.set_image(image)
    buffer = np.zeros(target.shape, dtype=np.uint8)
    session.set_target_buffer(buffer)
    scores, seconds = [], []
    for step in range(interactions):
        error = None if step == 0 else largest_error(buffer > 0, target)
        start = time.perf_counter()  # the user's wait: the prompt's prediction, not the robot finding its click
        if step == 0:
            _initial(session, target, initial)
        elif error is not None:
            session.add_point_interaction(error[0], include_interaction=error[1])
        if step == 0 or error is not None:  # a perfect mask needs no click (and takes no time)
            seconds.append(time.perf_counter() - start)
        scores.append(dice(buffer > 0, target))
    return RobotRun(scores, seconds)
