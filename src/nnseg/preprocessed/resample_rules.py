"""nnU-Net's geometry rules of resampling, shared by the scipy and torch resamplers and the prediction export.

* :func:`determine_do_sep_z_and_axis`: whether to resample "separate z" and along which axis;
* :func:`z_coordinates` / :func:`z_nearest`: the source coordinates along that axis (``map_coordinates``' grid
  ``(i + 0.5) * n_in / n_out - 0.5``) and its order-0 rule (``floor(c + 0.5)``, clamped to the volume);
* :func:`compute_new_shape` (one copy, in :mod:`nnseg.plans.spacing`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnseg.plans.spacing import ANISO_THRESHOLD, compute_new_shape

__all__ = ["ANISO_THRESHOLD", "compute_new_shape", "determine_do_sep_z_and_axis", "get_do_separate_z",
           "get_lowres_axis", "z_coordinates", "z_nearest"]


def get_lowres_axis(spacing: Sequence[float]) -> np.ndarray:
    """Indices of the axes with the largest spacing."""
    sp = np.asarray(spacing, dtype=float)
    return np.where(max(sp) / sp == 1)[0]


def get_do_separate_z(spacing: Sequence[float], anisotropy_threshold: float = ANISO_THRESHOLD) -> bool:
    sp = np.asarray(spacing, dtype=float)
    return bool(np.max(sp) / np.min(sp) > anisotropy_threshold)


def determine_do_sep_z_and_axis(
    force_separate_z: bool | None,
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    anisotropy_threshold: float = ANISO_THRESHOLD,
) -> tuple[bool, int | None]:
    """nnU-Net's separate-z decision: ``(do_separate_z, lowres_axis)``.

    ``force_separate_z`` True/False overrides the rule (True uses the current spacing's low-res axis). Otherwise
    the current spacing decides if it is anisotropic, else the target spacing. If the largest spacing is shared
    by two or three axes there is no unique low-res axis and no separate z.
    """
    if force_separate_z is not None:
        do_sep = bool(force_separate_z)
        axes = get_lowres_axis(current_spacing) if do_sep else None
    elif get_do_separate_z(current_spacing, anisotropy_threshold):
        do_sep, axes = True, get_lowres_axis(current_spacing)
    elif get_do_separate_z(new_spacing, anisotropy_threshold):
        do_sep, axes = True, get_lowres_axis(new_spacing)
    else:
        do_sep, axes = False, None
    if axes is None or len(axes) != 1:
        return False, None
    return do_sep, int(axes[0])


def z_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Source coordinates (float64) of ``n_out`` slices along the low-res axis of ``n_in`` (nnU-Net's
    ``map_coordinates`` grid: ``(i + 0.5) * n_in / n_out - 0.5``)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def z_nearest(coords: np.ndarray, n_in: int) -> np.ndarray:
    """Order-0 source index of each coordinate: ``map_coordinates(order=0, mode='nearest')`` picks ``floor(c + 0.5)``,
    clamped to the volume."""
    return np.clip(np.floor(coords + 0.5), 0, n_in - 1).astype(np.intp)
