"""Surface metrics (beyond nnU-Net, off by default): 95th-percentile Hausdorff distance and normalised surface Dice.

Definitions (spacing-aware, distances in the units of ``spacing``, i.e. mm for medical images):

* the *surface* of a mask is its voxels with at least one face-neighbour outside the mask (voxels on the image border
  count as surface); axes of length 1 (2D images stored as ``(1, X, Y)``) are dropped first;
* ``d(a, B)`` is the Euclidean distance from the centre of surface voxel ``a`` to the nearest surface voxel of ``B``;
* ``HD95 = max(P95{d(a, B) : a in dA}, P95{d(b, A) : b in dB})`` (the symmetric version of the directed 95th
  percentiles, as MONAI's ``compute_hausdorff_distance(percentile=95)``);
* ``NSD@t = (#{a in dA : d(a, B) <= t} + #{b in dB : d(b, A) <= t}) / (#dA + #dB)`` (voxel counts, as MONAI's
  ``compute_surface_dice``, without surface-element area weighting).

Edge conventions: both masks empty -> ``nan`` for both metrics; exactly one empty -> ``HD95 = inf`` and ``NSD = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

HD_PERCENTILE = 95.0


@dataclass(frozen=True)
class SurfaceOptions:
    """Which surface metrics to add per case.

    Attributes:
        nsd_tolerances_mm: one ``NSD@{t}mm`` entry per tolerance (e.g. ``(1.0,)`` gives ``NSD@1.0mm``).
        hd95: add ``HD95``.
    """

    nsd_tolerances_mm: tuple[float, ...] = (1.0,)
    hd95: bool = True

    def keys(self) -> list[str]:
        """The metric names these options add, in order."""
        return (["HD95"] if self.hd95 else []) + [nsd_key(t) for t in self.nsd_tolerances_mm]


def nsd_key(tolerance_mm: float) -> str:
    """The per-case key of the NSD at ``tolerance_mm``, e.g. ``NSD@1.0mm``."""
    return f"NSD@{float(tolerance_mm)}mm"


def _squeeze(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != len(spacing):
        raise ValueError(f"mask of shape {mask.shape} needs one spacing per axis, got spacing {tuple(spacing)}")
    keep = [i for i, s in enumerate(mask.shape) if s > 1] or [0]
    return mask.reshape([mask.shape[i] for i in keep]), tuple(float(spacing[i]) for i in keep)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a boolean mask (voxels with a face-neighbour outside the mask or the image)."""
    if not mask.any():
        return mask.copy()
    eroded = binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (distances are unchanged)."""
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, a.shape)
    box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    return a[box], b[box]


def surface_distances(ref_mask: np.ndarray, pred_mask: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(d(ref surface -> pred), d(pred surface -> ref))``, both non-empty masks.

    Args:
        ref_mask, pred_mask: boolean masks of equal shape (any dimensionality).
        spacing: voxel size per axis.

    Returns:
        Two float64 1D arrays (one distance per surface voxel of ref, resp. pred).
    """
    ref, sp = _squeeze(ref_mask, spacing)
    pred, _ = _squeeze(pred_mask, spacing)
    if not ref.any() or not pred.any():
        raise ValueError("surface_distances needs two non-empty masks; use hd95 / normalized_surface_dice for the "
                         "empty-mask conventions")
    ref, pred = _crop_to_union(ref, pred)
    surf_ref, surf_pred = surface_voxels(ref), surface_voxels(pred)
    to_pred = distance_transform_edt(~surf_pred, sampling=sp)
    to_ref = distance_transform_edt(~surf_ref, sampling=sp)
    return np.asarray(to_pred[surf_ref], dtype=np.float64), np.asarray(to_ref[surf_pred], dtype=np.float64)


def _empty_case(ref_mask: np.ndarray, pred_mask: np.ndarray, *, one_empty: float) -> float | None:
    ref_any, pred_any = bool(np.any(ref_mask)), bool(np.any(pred_mask))
    if not ref_any and not pred_any:
        return float("nan")
    if ref_any != pred_any:
        return one_empty
    return None


def hd95(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float], *,
         percentile: float = HD_PERCENTILE) -> float:
    """Symmetric 95th-percentile Hausdorff distance (``nan`` if both empty, ``inf`` if exactly one is empty)."""
    special = _empty_case(ref_mask, pred_mask, one_empty=float("inf"))
    if special is not None:
        return special
    d_ref, d_pred = surface_distances(ref_mask, pred_mask, spacing)
    return float(max(np.percentile(d_ref, percentile), np.percentile(d_pred, percentile)))


def normalized_surface_dice(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float], *,
                            tolerance_mm: float) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (``nan`` if both empty, ``0`` if exactly one is empty)."""
    if tolerance_mm < 0:
        raise ValueError(f"NSD tolerance must be >= 0 mm, got {tolerance_mm}")
    special = _empty_case(ref_mask, pred_mask, one_empty=0.0)
    if special is not None:
        return special
    d_ref, d_pred = surface_distances(ref_mask, pred_mask, spacing)
    return float((np.sum(d_ref <= tolerance_mm) + np.sum(d_pred <= tolerance_mm)) / (d_ref.size + d_pred.size))


def surface_metrics(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                    options: SurfaceOptions) -> dict[str, float]:
    """The metrics ``options`` asks for, keyed ``HD95`` / ``NSD@{t}mm`` (distances computed once)."""
    out: dict[str, float] = {}
    special_hd = _empty_case(ref_mask, pred_mask, one_empty=float("inf"))
    if special_hd is not None:
        special_nsd = _empty_case(ref_mask, pred_mask, one_empty=0.0)
        if options.hd95:
            out["HD95"] = special_hd
        out.update({nsd_key(t): special_nsd for t in options.nsd_tolerances_mm})  # type: ignore[misc]
        return out
    d_ref, d_pred = surface_distances(ref_mask, pred_mask, spacing)
    if options.hd95:
        out["HD95"] = float(max(np.percentile(d_ref, HD_PERCENTILE), np.percentile(d_pred, HD_PERCENTILE)))
    for t in options.nsd_tolerances_mm:
        out[nsd_key(t)] = float((np.sum(d_ref <= t) + np.sum(d_pred <= t)) / (d_ref.size + d_pred.size))
    return out
