"""Read a checked DICOM series as a float32 volume (rescale slope/intercept applied) with SimpleITK's geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnseg.raw.dicom import require
from nnseg.raw.dicom.files import DicomSeries
from nnseg.raw.dicom.geometry import DicomGeometryError, SliceHeader, StackGeometry, stack_geometry

DECODER_HINT = ("install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm) "
                "or decompress the files first (gdcmconv --raw IN OUT, or dcmdjpeg IN OUT)")


class DicomReadError(ValueError):
    """A series whose pixels cannot be read (the message names the file and what to do)."""


def _floats(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def slice_header(ds: Any) -> SliceHeader:
    """The geometry fields of one slice header."""
    return SliceHeader(path=str(ds.filename), position=_floats(ds.get("ImagePositionPatient")),  # type: ignore[arg-type]
                       orientation=_floats(ds.get("ImageOrientationPatient")),
                       pixel_spacing=_floats(ds.get("PixelSpacing")),  # type: ignore[arg-type]
                       rows=int(ds.Rows), columns=int(ds.Columns),
                       slice_thickness=_float(ds.get("SliceThickness")),
                       spacing_between_slices=_float(ds.get("SpacingBetweenSlices")))


def series_geometry(series: DicomSeries) -> StackGeometry:
    """The checked geometry of a series (headers only; see :func:`~nnseg.raw.dicom.geometry.stack_geometry`).

    Raises:
        DicomGeometryError: multi-frame images, or a stack that is not one regular volume.
    """
    for ds in series.headers:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            raise DicomGeometryError(f"series {series.uid}: {ds.filename} is a multi-frame image ({frames} frames, "
                                     f"{getattr(ds.SOPClassUID, 'name', ds.SOPClassUID)}); nnseg reads single-frame "
                                     "slices only: convert it to single-frame files first (e.g. dcm4che emf2sf, or "
                                     "dcm2niix to NIfTI)")
    return stack_geometry([slice_header(ds) for ds in series.headers], series=series.uid)


def _pixels(path: Path, series: str) -> np.ndarray:
    pydicom = require("pydicom")
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise DicomReadError(f"series {series}: {path} has no pixel data (PixelData is missing); remove the file or "
                             "export the series again with its images")
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)
    try:
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises several types for undecodable data; all mean "cannot read this file"
        raise DicomReadError(f"series {series}: cannot decode the pixel data of {path} (transfer syntax "
                             f"{getattr(syntax, 'name', syntax)}: {e}); {DECODER_HINT}") from None
    if pixels.ndim != 2:
        raise DicomReadError(f"series {series}: {path} has pixel array shape {pixels.shape} (colour or several "
                             "samples per pixel); only greyscale single-frame images can be segmented")
    slope = _float(ds.get("RescaleSlope")) or 1.0
    intercept = _float(ds.get("RescaleIntercept")) or 0.0
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def read_volume(series: DicomSeries) -> tuple[np.ndarray, StackGeometry, tuple[Any, ...]]:
    """The volume ``(slice, row, column)`` float32, its geometry, and the slice headers in volume order.

    Raises:
        DicomGeometryError / DicomReadError: see :func:`series_geometry`; undecodable or missing pixel data.
    """
    geometry = series_geometry(series)
    headers = tuple(series.headers[i] for i in geometry.order)
    volume = np.stack([_pixels(Path(ds.filename), series.uid) for ds in headers])
    return volume, geometry, headers


def to_sitk(volume: np.ndarray, geometry: StackGeometry) -> Any:
    """A SimpleITK image of the volume with the series geometry (what ``sitk.ImageSeriesReader`` gives)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image
