"""One simulated user per training sample: the initial prompt, then corrections of the network's prediction.

Initial prompts are drawn by :data:`KIND_WEIGHTS` (clicks most often: they are the commonest and the weakest prompt).

See :mod:`nnseg.interactive.training.simulate` for how each prompt is drawn.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnseg.interactive.training.simulate import (
    Layout,
    _weighted_voxel,
    box_mask,
    centre_voxel,
    draw_point,
    lasso_mask,
    perturbed_mask,
    scribble_mask,
)

KIND_WEIGHTS = {"points": 3.0, "bbox2d": 1.0, "bbox3d": 1.5, "scribble": 1.5, "lasso": 1.0, "initial_mask": 1.5}
NEGATIVE_INITIAL_POINT = 0.15  # share of initial prompts followed by a negative click just outside the object
LARGEST_ERROR = 0.8  # share of corrections in the largest error region (else a region drawn by its size)
CORRECTION_SCRIBBLE = 0.3  # share of corrections drawn as a scribble (else a click)


def decay(channels: np.ndarray, layout: Layout) -> None:
    """Age every prompt by one step (the previous mask is not a prompt)."""
    keep = channels[layout.prev_seg].copy()
    channels *= layout.decay
    channels[layout.prev_seg] = keep


def initial_prompt(channels: np.ndarray, obj: np.ndarray, valid: np.ndarray, layout: Layout,
                   rng: np.random.Generator) -> str:
    """Draw the first prompt(s) on ``obj`` into ``channels`` (in place); returns the kind (``none``: no object)."""
    if not obj.any():
        return "none"
    weights = np.array([KIND_WEIGHTS.get(k, 1.0) for k in layout.kinds])
    kind = str(layout.kinds[int(rng.choice(len(layout.kinds), p=weights / weights.sum()))])
    if kind == "initial_mask":
        channels[layout.prev_seg][perturbed_mask(obj, rng)] = 1
        return kind
    positive = layout.pairs[kind][0]
    if kind == "points":
        for i in range(min(3, int(rng.geometric(0.6)))):
            if i:
                decay(channels, layout)
            draw_point(channels, positive, _weighted_voxel(obj, rng), layout.point_radius)
    elif kind in ("bbox2d", "bbox3d"):
        channels[positive][box_mask(obj, rng, flat=kind == "bbox2d")] = 1
    else:
        channels[positive][(scribble_mask if kind == "scribble" else lasso_mask)(obj, rng)] = 1
    ring = ndimage.binary_dilation(obj, iterations=6) & ~ndimage.binary_dilation(obj, iterations=2) & valid
    if "points" in layout.pairs and rng.random() < NEGATIVE_INITIAL_POINT and ring.any():
        decay(channels, layout)
        draw_point(channels, layout.pairs["points"][1], _weighted_voxel(ring, rng, power=0.0), layout.point_radius)
    return kind


def _error_region(target: np.ndarray, prediction: np.ndarray, valid: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, bool] | None:
    """A connected error region (usually the largest) and whether it was missed (True) or extra (False)."""
    regions = []
    for positive, error in ((True, target & ~prediction & valid), (False, prediction & ~target & valid)):
        labels, n = ndimage.label(error)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            regions += [(int(s), positive, labels, i + 1) for i, s in enumerate(sizes)]
    if not regions:
        return None
    sizes = np.array([r[0] for r in regions], dtype=np.float64)
    pick = int(np.argmax(sizes)) if rng.random() < LARGEST_ERROR else int(rng.choice(len(regions), p=sizes / sizes.sum()))
    _, positive, labels, index = regions[pick]
    return labels == index, positive


def correction(channels: np.ndarray, target: np.ndarray, prediction: np.ndarray, valid: np.ndarray, layout: Layout,
               rng: np.random.Generator) -> bool:
    """Age the prompts, put ``prediction`` into the previous-mask channel and add one corrective prompt in an error
    region (in place). False when the prediction has no error (only the previous mask changes)."""
    decay(channels, layout)
    channels[layout.prev_seg] = prediction
    found = _error_region(target, prediction, valid, rng)
    if found is None:
        return False
    region, positive = found
    side = 0 if positive else 1
    if "scribble" in layout.pairs and "scribble" in layout.kinds and rng.random() < CORRECTION_SCRIBBLE:
        channels[layout.pairs["scribble"][side]][scribble_mask(region, rng)] = 1
        return True
    point = centre_voxel(region) if rng.random() < 0.5 else _weighted_voxel(region, rng, power=2.0)
    draw_point(channels, layout.pairs["points"][side], point, layout.point_radius)
    return True
