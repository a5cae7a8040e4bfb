"""``SimpleITKIO`` and ``SimpleITKIOWithReorient``: NIfTI (``.nii.gz``), NRRD, MetaImage, GIPL through SimpleITK."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnseg._types import Geometry
from nnseg.raw.io_common import BaseImageIO, ImageReadError


class SimpleITKIO(BaseImageIO):
    """nnU-Net's default reader for medical volumes.

    Arrays come from ``GetArrayFromImage`` (SimpleITK's (x, y, z) index becomes array axes (z, y, x)) and the
    spacing is SimpleITK's reversed. A 2D file becomes ``(1, 1, X, Y)`` with spacing ``(999 * max, sy, sx)``;
    a 4D file is read as several channels (its last SimpleITK axis). ``sitk_stuff`` keeps SimpleITK's own
    spacing, origin and direction so that :meth:`write_seg` restores the header exactly. ``.nii`` is
    deliberately not listed (nnU-Net reads uncompressed NIfTI with :class:`NibabelIO`).
    """

    name: ClassVar[str] = "SimpleITKIO"
    supported_file_endings: ClassVar[tuple[str, ...]] = (".nii.gz", ".nrrd", ".mha", ".gipl")

    def _read_file(self, path: Path) -> tuple[np.ndarray, Geometry]:
        return _array_and_geometry(read_sitk_image(path), path, self.name)

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
        import SimpleITK as sitk

        sitk.WriteImage(_image_for_writing(seg, path, geometry), str(path), True)


class SimpleITKIOWithReorient(SimpleITKIO):
    """:class:`SimpleITKIO` after ``sitk.DICOMOrient(image, "RAS")`` (nnU-Net's class, chosen by name only).

    ``sitk_stuff`` holds the reoriented header plus ``original_orientation``; the writer orients the label
    map back to it. nnU-Net never picks this class from a file ending: set
    ``dataset.json['overwrite_image_reader_writer'] = "SimpleITKIOWithReorient"``.
    """

    name: ClassVar[str] = "SimpleITKIOWithReorient"
    target_orientation: ClassVar[str] = "RAS"

    def _read_file(self, path: Path) -> tuple[np.ndarray, Geometry]:
        import SimpleITK as sitk

        image = read_sitk_image(path)
        original = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
        array, geometry = _array_and_geometry(sitk.DICOMOrient(image, self.target_orientation), path, self.name)
        return array, replace(geometry, original_orientation=original)

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
        import SimpleITK as sitk

        if geometry.original_orientation is None:
            raise ValueError(f"cannot write {path} with {self.name}: the geometry lacks sitk_stuff "
                             f"'original_orientation' (was the image read with another reader?)")
        image = _image_for_writing(seg, path, geometry)
        sitk.WriteImage(sitk.DICOMOrient(image, geometry.original_orientation), str(path), True)


GZIP_CHUNK = 1 << 24


def read_sitk_image(path: Path) -> Any:
    """``sitk.ReadImage``, after checking that a gzip-compressed file is complete.

    SimpleITK reads a truncated ``.nii.gz`` without an error (the missing voxels become 0), so a damaged download
    would be trained on or predicted silently; the gzip stream is decompressed once to its end-of-stream marker first.
    """
    import gzip
    import zlib

    import SimpleITK as sitk

    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(GZIP_CHUNK):
                    pass
        except gzip.BadGzipFile:
            pass  # not gzip at all (an uncompressed file named .gz): SimpleITK reads those as they are
        except (EOFError, zlib.error) as e:
            raise EOFError(f"the compressed data is truncated or damaged ({e}); copy or download the file again") from None
    return sitk.ReadImage(str(path))


def _array_and_geometry(image: Any, path: Path, reader: str) -> tuple[np.ndarray, Geometry]:
    """nnU-Net's array ``(C, X, Y, Z)`` and geometry of a SimpleITK image (2D, 3D, or 4D = channels)."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (vector/RGB "
                             f"pixels); store each channel as its own file (CASE_0000, CASE_0001, ...)")
    sitk_spacing = tuple(float(s) for s in image.GetSpacing())
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2:
        array = array[None, None]
        spacing = (max(sitk_spacing) * 999, *sitk_spacing[::-1])
    elif array.ndim == 3:
        array = array[None]
        spacing = sitk_spacing[::-1]
    elif array.ndim == 4:
        spacing = sitk_spacing[::-1][1:]
    else:
        raise ImageReadError(f"{path} has {array.ndim} dimensions; {reader} reads 2D, 3D and 4D (channels) images")
    geometry = Geometry(
        spacing=tuple(abs(float(s)) for s in spacing),
        reader=reader,
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
        sitk_spacing=sitk_spacing,
    )
    return array, geometry


def _image_for_writing(seg: np.ndarray, path: Path, geometry: Geometry) -> Any:
    """A SimpleITK image of the label map ``(X, Y, Z)`` (2D geometry: ``(1, X, Y)``) with the stored header."""
    import SimpleITK as sitk

    spacing, origin, direction = _sitk_header(geometry)
    if len(spacing) == 2:
        if seg.shape[0] != 1:
            raise ValueError(f"cannot write {path}: the geometry is 2D but the segmentation has shape {seg.shape} "
                             f"(expected (1, X, Y))")
        seg = seg[0]
    image = sitk.GetImageFromArray(seg)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image

def _sitk_header(geometry: Geometry) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """SimpleITK (spacing, origin, direction) to write: the stored ones (4D reduced to its first 3 axes).

    Without ``sitk_stuff`` (a geometry from another reader) the array spacing is reversed, the origin is 0
    and the direction the identity.
    """
    if geometry.sitk_spacing is None:
        spacing = tuple(float(s) for s in geometry.spacing[::-1])
        dim = len(spacing)
        return spacing, (0.0,) * dim, tuple(float(v) for v in np.eye(dim).ravel())
    spacing = tuple(geometry.sitk_spacing)
    dim = len(spacing)
    origin = tuple(geometry.origin) if geometry.origin else (0.0,) * dim
    direction = tuple(geometry.direction) if geometry.direction else tuple(float(v) for v in np.eye(dim).ravel())
    if dim == 4:
        spacing, origin = spacing[:3], origin[:3]
        direction = tuple(float(v) for v in np.asarray(direction, dtype=np.float64).reshape(4, 4)[:3, :3].ravel())
    elif dim not in (2, 3):
        raise ValueError(f"cannot write a segmentation with a {dim}D SimpleITK geometry (spacing {spacing}); expected 2D or 3D")
    return spacing, origin, direction
