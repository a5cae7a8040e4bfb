"""The geometry of a stack of single-frame slices, checked: one orientation, one size, evenly spaced along the normal.

Pure functions over header values (no pydicom). Conventions are SimpleITK's (LPS, as DICOM): the volume array is
``(slice, row, column)``; SimpleITK axis x runs along a row (``ImageOrientationPatient[:3]``, spacing
``PixelSpacing[1]``), y down a column (``ImageOrientationPatient[3:]``, ``PixelSpacing[0]``), z along the slice normal
``x cross y`` with slices sorted by their position on it. The origin is the first sorted slice's
``ImagePositionPatient``; ``direction`` is the 3x3 matrix with those axes as columns, row-major (SimpleITK's order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ORIENTATION_TOL = 1e-3      # cosines of two slices' orientations may differ this much
POSITION_TOL_MM = 1e-3      # two slices closer than this along the normal are at the same position (mm)
ROUNDING_TOL_MM = 0.025     # positions written with 0.01 mm precision must pass the checks below
SPACING_REL_TOL = 0.01      # gaps between slices may differ by 1% of the median gap (or ROUNDING_TOL_MM)
SHEAR_REL_TOL = 1e-3        # sideways drift from the first slice's normal line, per mm along it (0.06 degrees)


class DicomGeometryError(ValueError):
    """A series whose slices do not form one regular volume (the message names the series and the problem)."""


@dataclass(frozen=True)
class SliceHeader:
    """The header values of one slice that decide the geometry."""

    path: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None


@dataclass(frozen=True)
class StackGeometry:
    """The checked geometry: ``order`` indexes the given headers from the first slice to the last."""

    order: tuple[int, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape: tuple[int, int, int]


def _uniform(headers: Sequence[SliceHeader], series: str) -> None:
    first = headers[0]
    for h in headers:
        if h.position is None or h.orientation is None or h.pixel_spacing is None:
            raise DicomGeometryError(f"series {series}: {h.path} lacks ImagePositionPatient, ImageOrientationPatient or "
                                     "PixelSpacing, so its place in space is unknown; only images with patient "
                                     "geometry can be segmented")
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise DicomGeometryError(f"series {series} mixes image sizes ({first.rows}x{first.columns} in {first.path}, "
                                     f"{h.rows}x{h.columns} in {h.path}); split the series or remove the odd files")
        if np.abs(np.subtract(h.orientation, first.orientation)).max() > ORIENTATION_TOL:
            raise DicomGeometryError(f"series {series} mixes orientations ({first.orientation} in {first.path}, "
                                     f"{h.orientation} in {h.path}); split the series or remove the odd files")
        if np.abs(np.subtract(h.pixel_spacing, first.pixel_spacing)).max() > POSITION_TOL_MM:
            raise DicomGeometryError(f"series {series} mixes pixel spacings ({first.pixel_spacing} in {first.path}, "
                                     f"{h.pixel_spacing} in {h.path}); split the series or remove the odd files")


def _axes(orientation: Sequence[float], series: str) -> np.ndarray:
    row, col = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:6], dtype=np.float64)
    if len(orientation) != 6 or abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 \
            or abs(row @ col) > 1e-3:
        raise DicomGeometryError(f"series {series}: ImageOrientationPatient {tuple(orientation)} is not two orthogonal "
                                 "unit vectors; the file is damaged")
    return np.stack([row, col, np.cross(row, col)], axis=1)


def _slice_gap(positions: np.ndarray, axes: np.ndarray, headers: Sequence[SliceHeader], series: str) -> float:
    """The spacing along the normal of sorted positions; refuses tilt, duplicates, gaps and uneven spacing."""
    if len(positions) == 1:
        h = headers[0]
        return float(h.spacing_between_slices or h.slice_thickness or 1.0)
    along = np.diff(positions, axis=0) @ axes[:, 2]
    if np.any(along < POSITION_TOL_MM):
        k = int(np.argmin(along))
        raise DicomGeometryError(f"series {series} has two slices at the same position {tuple(positions[k])} "
                                 "(several acquisitions, echoes or time points in one series?); split the series")
    offsets = positions - positions[0]
    depth = offsets @ axes[:, 2]
    drift = np.linalg.norm(offsets - depth[:, None] * axes[:, 2][None], axis=1)
    if np.any(drift > ROUNDING_TOL_MM + SHEAR_REL_TOL * depth):
        k = int(np.argmax(drift - SHEAR_REL_TOL * depth))
        angle = float(np.degrees(np.arctan2(drift[k], depth[k])))
        raise DicomGeometryError(f"series {series}: slices are shifted sideways by {angle:.2f} degrees from the slice "
                                 "normal (gantry tilt or a sheared stack); resample it to a regular grid first "
                                 "(e.g. dcm2niix corrects gantry tilt)")
    gap = float(np.median(along))
    bad = np.abs(along - gap) > max(SPACING_REL_TOL * gap, ROUNDING_TOL_MM)
    if np.any(bad):
        k = int(np.argmax(bad))
        missing = along[k] / gap
        if abs(missing - round(missing)) < SPACING_REL_TOL * round(missing) and round(missing) >= 2:
            raise DicomGeometryError(f"series {series} misses {round(missing) - 1} slice(s) between positions "
                                     f"{along[:k].sum():.3f} and {along[:k + 1].sum():.3f} mm along the normal "
                                     f"(regular gap {gap:.4g} mm); add the missing files")
        raise DicomGeometryError(f"series {series} has non-uniform slice spacing ({along.min():.4g} to "
                                 f"{along.max():.4g} mm); nnseg needs a regular grid: resample the series first")
    return gap


def stack_geometry(headers: Sequence[SliceHeader], *, series: str) -> StackGeometry:
    """Sort slices along their normal and check that they form one regular volume.

    Raises:
        DicomGeometryError: missing geometry, mixed sizes/orientations/pixel spacings, two slices at one position,
            gantry tilt, missing slices or non-uniform spacing (each message names the series and what to do).
    """
    if not headers:
        raise DicomGeometryError(f"series {series} has no image slices")
    _uniform(headers, series)
    axes = _axes(headers[0].orientation or (), series)
    positions = np.asarray([h.position for h in headers], dtype=np.float64)
    order = np.argsort(positions @ axes[:, 2], kind="stable")
    gap = _slice_gap(positions[order], axes, [headers[i] for i in order], series)
    first = headers[int(order[0])]
    row_spacing, col_spacing = first.pixel_spacing or (1.0, 1.0)
    return StackGeometry(order=tuple(int(i) for i in order),
                         spacing=(float(col_spacing), float(row_spacing), gap),
                         origin=tuple(float(v) for v in positions[order[0]]),  # type: ignore[arg-type]
                         direction=tuple(float(v) for v in axes.ravel()),
                         shape=(len(headers), first.rows, first.columns))
