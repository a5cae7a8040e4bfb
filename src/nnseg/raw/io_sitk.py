"""``SimpleITKIO``: NIfTI (``.nii.gz``), NRRD, MetaImage and GIPL files through SimpleITK (as nnU-Net's class)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

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
        import SimpleITK as sitk

        image = sitk.ReadImage(str(path))
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
            raise ImageReadError(f"{path} has {array.ndim} dimensions; SimpleITKIO reads 2D, 3D and 4D (channels) images")
        geometry = Geometry(
            spacing=tuple(abs(float(s)) for s in spacing),
            reader=self.name,
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
            sitk_spacing=sitk_spacing,
        )
        return array, geometry

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
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
        sitk.WriteImage(image, str(path), True)


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
