"""Foreground voxel locations per class, stored with each preprocessed case (reference §1.8 step 7).

The training loader draws its foreground-oversampled patches around these voxels. As in nnU-Net: a
``RandomState(1234)`` draws, per class (or region) in the given order, ``min(10 000, n)`` but at least
``ceil(1% of n)`` of the class' ``n`` voxels without replacement (classes that are absent draw nothing and get
an empty list). Only voxels with ``seg != 0`` are candidates; above 1e7 of them every k-th is kept.

Properties store them JSON-ready: key ``str(c)`` (``"1"``; a region or the ignore-label key ``(-1, 0, 1, ...)`` as
``str(tuple)``, e.g. ``"(1, 2)"``), value a list of ``[0, x, y, z]`` voxel coordinates of the ``(1, X, Y, Z)`` seg.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nnseg._types import LabelOrRegion

NUM_SAMPLES = 10_000
MIN_PERCENT_COVERAGE = 0.01
MAX_FOREGROUND_VOXELS = 10_000_000


def class_location_key(c: LabelOrRegion | Sequence[int]) -> str:
    """The properties key of a class (``"1"``) or region / ignore-label group (``"(1, 2)"``)."""
    if isinstance(c, (tuple, list)):
        return str(tuple(int(v) for v in c))
    return str(int(c))


def sample_class_locations(
    seg: np.ndarray,
    classes_or_regions: Sequence[LabelOrRegion | Sequence[int]],
    *,
    seed: int = 1234,
    num_samples: int = NUM_SAMPLES,
    min_percent_coverage: float = MIN_PERCENT_COVERAGE,
) -> dict[str, list[list[int]]]:
    """Sample voxel coordinates of every class / region of ``seg``.

    Args:
        seg: label map ``(1, X, Y, Z)`` (any integer-valued dtype).
        classes_or_regions: labels (int) or regions (tuple of labels) in nnU-Net's order (foreground labels, or
            foreground regions; with an ignore label a final ``(-1, *all_labels)`` group).
        seed: seed of the ``np.random.RandomState`` shared by all classes.

    Returns:
        ``{class_location_key(c): [[0, x, y, z], ...]}`` with every entry of ``classes_or_regions`` present.
    """
    rng = np.random.RandomState(seed)
    flat = np.flatnonzero(seg)  # flat indices of seg != 0, in C order (nnU-Net's argwhere order)
    values = seg.reshape(-1)[flat]
    if flat.size > MAX_FOREGROUND_VOXELS:
        take_every = math.floor(flat.size / MAX_FOREGROUND_VOXELS)
        flat, values = flat[::take_every], values[::take_every]
    out: dict[str, list[list[int]]] = {}
    for c in classes_or_regions:
        key = class_location_key(c)
        members = np.isin(values, np.asarray(c, dtype=values.dtype).ravel()) if isinstance(c, (tuple, list)) else values == c
        locs = flat[members]
        if locs.size == 0:
            out[key] = []
            continue
        n = max(min(num_samples, locs.size), int(np.ceil(locs.size * min_percent_coverage)))
        chosen = locs[rng.choice(locs.size, n, replace=False)]
        out[key] = np.stack(np.unravel_index(chosen, seg.shape), axis=1).tolist()
    return out


def classes_to_collect(
    foreground_labels: Sequence[int],
    *,
    regions: Sequence[Sequence[int] | int] | None = None,
    ignore_label: int | None = None,
    all_labels: Sequence[int] = (),
) -> list[LabelOrRegion]:
    """nnU-Net's list of classes to sample: foreground regions if any else foreground labels, plus
    ``(-1, *all_labels)`` when there is an ignore label (annotated voxels)."""
    if regions:
        collect: list[LabelOrRegion] = [tuple(int(v) for v in r) if isinstance(r, (tuple, list)) else int(r) for r in regions]
    else:
        collect = [int(v) for v in foreground_labels]
    if ignore_label is not None:
        collect.append((-1, *(int(v) for v in all_labels)))
    return collect
