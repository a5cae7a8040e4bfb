"""``SimpleITKIO`` and ``SimpleITKIOWithReorient``: NIfTI (``.nii.gz``), NRRD, MetaImage, GIPL through SimpleITK."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnseg._types import Geometry
from nnseg.raw.io_common import BaseImageIO, ImageReadError, ShapeAndSpacing


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

    def _read_file_header(self, path: Path) -> ShapeAndSpacing | None:
        """:func:`read_image_header` with :meth:`ImageHeader.array_shape`'s rules; None for 4D and vector files."""
        header = read_image_header(path)
        return header.array_shape(1) if header.components == 1 else None

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

    def _read_file_header(self, path: Path) -> ShapeAndSpacing | None:
        """The header's size and spacing permuted as ``DICOMOrient`` permutes the axes (SimpleITK's header read, for
        the direction); None for anything but a 3D scalar image (``DICOMOrient`` takes 3D images only)."""
        information = _sitk_information(path)
        header = _header_of(information)
        if header.components != 1 or len(header.size) != 3:
            return None
        order = reoriented_axes(information.GetDirection(), self.target_orientation)
        return ImageHeader(tuple(header.size[i] for i in order), tuple(header.spacing[i] for i in order)).array_shape(1)

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
        import SimpleITK as sitk

        if geometry.original_orientation is None:
            raise ValueError(f"cannot write {path} with {self.name}: the geometry lacks sitk_stuff "
                             f"'original_orientation' (was the image read with another reader?)")
        image = _image_for_writing(seg, path, geometry)
        sitk.WriteImage(sitk.DICOMOrient(image, geometry.original_orientation), str(path), True)


GZIP_CHUNK = 1 << 24


@dataclass(frozen=True)
class ImageHeader:
    """What SimpleITK's header read says about an image file, in SimpleITK's (x, y, z) order."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    components: int = 1

    def array_shape(self, channels: int) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
        """``(C, X, Y, Z)`` and spacing as :class:`SimpleITKIO` returns ``channels`` such files (array axes reverse
        SimpleITK's; a 2D file is ``(C, 1, X, Y)`` with spacing ``999 x`` the largest); None for a 4D (or higher)
        header, whose meaning only reading the image tells. Vector pixels are left to the caller
        (:attr:`components`)."""
        size, spacing = tuple(int(s) for s in self.size[::-1]), tuple(abs(float(s)) for s in self.spacing[::-1])
        if len(size) == 2:
            return (int(channels), 1, *size), (max(spacing) * 999, *spacing)
        if len(size) == 3:
            return (int(channels), *size), spacing
        return None


def read_image_header(path: Path) -> ImageHeader:
    """The file's :class:`ImageHeader` without reading its voxels: NIfTI-1 from its first 348 bytes (~25x faster than
    SimpleITK's header read, which matters when a cluster run sizes 10,000s of cases), anything else (other formats,
    NIfTI-2, vector or complex NIfTI) with SimpleITK's ``ReadImageInformation``.

    Raises:
        RuntimeError: SimpleITK cannot read the header (its own message).
    """
    path = Path(path)
    nifti = _nifti1_header(path) if path.name.lower().endswith((".nii.gz", ".nii")) else None
    return nifti if nifti is not None else _header_of(_sitk_information(path))


def _sitk_information(path: Path) -> Any:
    """A SimpleITK ``ImageFileReader`` of ``path`` after ``ReadImageInformation`` (header only)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _header_of(reader: Any) -> ImageHeader:
    return ImageHeader(tuple(int(s) for s in reader.GetSize()), tuple(float(s) for s in reader.GetSpacing()),
                       int(reader.GetNumberOfComponents()))


def reoriented_axes(direction: tuple[float, ...], orientation: str) -> tuple[int, ...]:
    """For each axis of ``sitk.DICOMOrient(image, orientation)`` the axis of a 3D ``image`` with ``direction`` it came
    from (SimpleITK order), found by orienting a 1 x 2 x 3 probe with that direction (flips keep sizes)."""
    import SimpleITK as sitk

    probe = sitk.Image([1, 2, 3], sitk.sitkUInt8)
    probe.SetDirection(direction)
    return tuple(int(s) - 1 for s in sitk.DICOMOrient(probe, orientation).GetSize())


#: NIfTI-1 scalar datatypes (uint8 ... uint64, float32/64): one component per voxel in SimpleITK too
_NIFTI_SCALAR = {2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280}
#: ``xyzt_units & 7`` -> the factor SimpleITK (ITK) applies to NIfTI spacing: metres and microns become millimetres
_NIFTI_UNIT_SCALE = {1: 1000.0, 3: 0.001}


def _nifti1_header(path: Path) -> ImageHeader | None:
    """``dim``/``pixdim`` of a plain NIfTI-1 header as SimpleITK reads them (trailing size-1 axes past the third
    dropped: a 4D header with one time point is a 3D image; spacing in mm); None for anything else (NIfTI-2, damaged,
    vector/RGB/complex voxels, more than 4 axes), left to SimpleITK."""
    import gzip
    import struct

    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
            raw = f.read(348)
    except (OSError, EOFError):
        return None
    if len(raw) < 348:
        return None
    for order in "<>":
        if struct.unpack(order + "i", raw[:4])[0] == 348:
            dim = struct.unpack(order + "8h", raw[40:56])
            datatype = struct.unpack(order + "h", raw[70:72])[0]
            pixdim = struct.unpack(order + "8f", raw[76:108])
            if not 1 <= dim[0] <= 7 or any(d <= 0 for d in dim[1:1 + dim[0]]) or datatype not in _NIFTI_SCALAR:
                return None
            n = dim[0]
            while n > 3 and dim[n] == 1:
                n -= 1
            if n > 4:
                return None
            scale = _NIFTI_UNIT_SCALE.get(raw[123] & 7, 1.0)
            spacing = tuple(abs(float(p)) * (scale if i < 3 else 1.0) for i, p in enumerate(pixdim[1:1 + n]))
            return ImageHeader(tuple(int(d) for d in dim[1:1 + n]), spacing)
    return None


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
