"""``NibabelIO`` and ``NibabelIOWithReorient``: NIfTI (``.nii``, ``.nii.gz``) through nibabel, as nnU-Net's classes.

Both transpose nibabel's (i, j, k) data to (k, j, i) and reverse the zooms, so arrays match SimpleITK's
axis order. ``NibabelIOWithReorient`` first reorients the image to the closest RAS orientation and, when
writing, turns the label map back into the file's original orientation. Their headers (``read_header``) come from
``nibabel.load``, which reads no voxels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnseg._types import Geometry
from nnseg.raw.io_common import BaseImageIO, ImageReadError, ShapeAndSpacing


def _matrix(affine: Any) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64))


def _load_3d(path: Path, reader: str) -> Any:
    import nibabel

    image = nibabel.load(str(path))
    if len(image.shape) != 3:
        raise ImageReadError(f"{reader} reads 3D images only; {path} has shape {image.shape} "
                             f"(use SimpleITKIO via a .nii.gz file for 2D or 4D images, or split the channels)")
    return image


def _nifti_for_writing(seg: np.ndarray, affine: Any) -> Any:
    import nibabel

    return nibabel.Nifti1Image(np.ascontiguousarray(seg.transpose(2, 1, 0)), affine=np.asarray(affine, dtype=np.float64))


class NibabelIO(BaseImageIO):
    """Reads NIfTI with nibabel: ``get_fdata().transpose(2, 1, 0)``, zooms reversed; keeps ``original_affine``."""

    name: ClassVar[str] = "NibabelIO"
    supported_file_endings: ClassVar[tuple[str, ...]] = (".nii", ".nii.gz")

    def _read_file(self, path: Path) -> tuple[np.ndarray, Geometry]:
        image = _load_3d(path, self.name)
        spacing = tuple(float(z) for z in image.header.get_zooms()[::-1])
        data = image.get_fdata().transpose(2, 1, 0)[None]
        return data, Geometry(spacing=spacing, reader=self.name, affine=_matrix(image.affine))

    def _read_file_header(self, path: Path) -> ShapeAndSpacing | None:
        return _shape_and_spacing(_load_3d(path, self.name))

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
        import nibabel

        nibabel.save(_nifti_for_writing(seg, _affine_or_default(geometry, path)), str(path))


class NibabelIOWithReorient(BaseImageIO):
    """Like :class:`NibabelIO` after reorienting to RAS; keeps ``original_affine`` and ``reoriented_affine``."""

    name: ClassVar[str] = "NibabelIOWithReorient"
    supported_file_endings: ClassVar[tuple[str, ...]] = (".nii", ".nii.gz")

    def _read_file(self, path: Path) -> tuple[np.ndarray, Geometry]:
        from nibabel.orientations import io_orientation

        image = _load_3d(path, self.name)
        reoriented = image.as_reoriented(io_orientation(image.affine))
        spacing = tuple(float(z) for z in reoriented.header.get_zooms()[::-1])
        data = reoriented.get_fdata().transpose(2, 1, 0)[None]
        geometry = Geometry(spacing=spacing, reader=self.name, affine=_matrix(image.affine),
                            reoriented_affine=_matrix(reoriented.affine))
        return data, geometry

    def _read_file_header(self, path: Path) -> ShapeAndSpacing | None:
        return _shape_and_spacing(_reoriented_header(_load_3d(path, self.name)))

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
        import nibabel
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        if geometry.reoriented_affine is None or geometry.affine is None:
            raise ValueError(f"cannot write {path} with NibabelIOWithReorient: the geometry lacks nibabel_stuff "
                             f"'original_affine'/'reoriented_affine' (was the image read with another reader?)")
        original = np.asarray(geometry.affine, dtype=np.float64)
        ras_image = _nifti_for_writing(seg, geometry.reoriented_affine)
        back = ras_image.as_reoriented(ornt_transform(axcodes2ornt("RAS"), io_orientation(original)))
        if not np.allclose(back.affine, original):
            warnings.warn(f"{path}: the restored affine differs from the original one\n{back.affine}\nvs\n{original}",
                          UserWarning, stacklevel=4)
        nibabel.save(back, str(path))


def _shape_and_spacing(image: Any) -> ShapeAndSpacing:
    """``(1, k, j, i)`` and the zooms reversed: what the readers' ``get_fdata().transpose(2, 1, 0)[None]`` gives."""
    return (1, *(int(s) for s in image.shape[::-1])), tuple(float(z) for z in image.header.get_zooms()[::-1])


def _reoriented_header(image: Any) -> Any:
    """``image.as_reoriented(io_orientation(image.affine))`` without the voxels: the same steps (the identity keeps the
    image; else the reoriented shape and affine, the header rebuilt from them by nibabel) on a stand-in array of zero
    strides, so the shape and zooms are nibabel's own."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(image.affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return image
    stand_in = np.broadcast_to(np.zeros((), dtype=image.get_data_dtype()), image.shape)
    affine = image.affine.dot(inv_ornt_aff(ornt, image.shape))
    return image.__class__(apply_orientation(stand_in, ornt), affine, image.header)


def _affine_or_default(geometry: Geometry, path: Path) -> Any:
    """The stored original affine; without one (geometry from another reader) a diagonal of the spacing."""
    if geometry.affine is not None:
        return geometry.affine
    if len(geometry.spacing) != 3:
        raise ValueError(f"cannot write {path}: NIfTI needs a 3D geometry, got spacing {geometry.spacing}")
    return np.diag([*[float(s) for s in geometry.spacing[::-1]], 1.0])
