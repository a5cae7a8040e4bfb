"""Headers without the voxels (:func:`nnseg.raw.io_sitk.read_image_header`): the NIfTI-1 fast path reads what
SimpleITK reads, and :meth:`ImageHeader.array_shape` is the shape and spacing the readers return after reading the
whole image (the per-case memory check and the cluster's task sizes rely on both)."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nnseg.raw.image_io import NaturalImage2DIO, SimpleITKIO
from nnseg.raw.io_sitk import ImageHeader, read_image_header


def _sitk(path: Path, shape_zyx: tuple[int, ...], spacing: tuple[float, ...]) -> Path:
    image = sitk.GetImageFromArray(np.arange(int(np.prod(shape_zyx)), dtype=np.int16).reshape(shape_zyx))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _nib(path: Path, shape_xyz: tuple[int, ...], zooms: tuple[float, ...], *, units: str = "mm",
         big_endian: bool = False) -> Path:
    image = nibabel.Nifti1Image(np.ones(shape_xyz, np.float32), np.diag([*zooms[:3], 1.0]))
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units(xyz=units)
    if big_endian:
        image = nibabel.Nifti1Image(image.dataobj, image.affine, image.header.as_byteswapped(">"))
    nibabel.save(image, str(path))
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


FILES = {
    "3d.nii.gz": lambda d: _sitk(d / "3d.nii.gz", (7, 5, 3), (0.7, 1.25, 3.0)),
    "3d.nii": lambda d: _sitk(d / "3d.nii", (7, 5, 3), (0.7, 1.25, 3.0)),
    "one_slice.nii.gz": lambda d: _sitk(d / "one_slice.nii.gz", (1, 6, 4), (0.7, 1.25, 3.0)),
    "2d.nii.gz": lambda d: _sitk(d / "2d.nii.gz", (9, 11), (0.8, 0.6)),
    "4d_one_time_point.nii.gz": lambda d: _nib(d / "4d_one_time_point.nii.gz", (6, 5, 4, 1), (0.9, 0.8, 2.0, 1.0)),
    "micron.nii.gz": lambda d: _nib(d / "micron.nii.gz", (6, 5, 4), (500.0, 400.0, 300.0), units="micron"),
    "big_endian.nii": lambda d: _nib(d / "big_endian.nii", (6, 5, 4), (0.9, 0.8, 2.0), big_endian=True),
    "3d.mha": lambda d: _sitk(d / "3d.mha", (7, 5, 3), (0.5, 0.5, 2.0)),
    "3d.nrrd": lambda d: _sitk(d / "3d.nrrd", (7, 5, 3), (0.7, 1.25, 3.0)),
    "2d.png": lambda d: _png(d / "2d.png", np.zeros((12, 17), np.uint8)),
    "2d.tif": lambda d: (tifffile.imwrite(str(d / "2d.tif"), np.zeros((13, 8), np.uint16)), d / "2d.tif")[1],
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_header_is_simpleitks_and_its_shape_the_readers(tmp_path: Path, name: str) -> None:
    """Every format: SimpleITK's header; the array shape and spacing equal SimpleITKIO's (and NaturalImage2DIO's for
    2D images) after reading the voxels, for one and for two channel files."""
    path = FILES[name](tmp_path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    header = read_image_header(path)
    assert header.size == reader.GetSize() and header.components == reader.GetNumberOfComponents() == 1
    assert header.spacing == pytest.approx(reader.GetSpacing(), rel=1e-6)
    readers = [SimpleITKIO()] + ([NaturalImage2DIO()] if name.endswith((".png", ".tif")) else [])
    for io in readers:
        for channels in (1, 2):
            data, geometry = io.read_images([path] * channels)
            shape, spacing = header.array_shape(channels)
            assert shape == data.shape, io.name
            assert spacing == pytest.approx(tuple(float(s) for s in geometry.spacing), rel=1e-6), io.name


@pytest.mark.parametrize("name", ["3d.nii.gz", "3d.nii", "4d_one_time_point.nii.gz", "micron.nii.gz",
                                  "big_endian.nii"])
def test_nifti1_headers_are_read_without_simpleitk(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path answers NIfTI-1 alone (a cluster run sizes 10,000s of cases from their headers)."""
    path = FILES[name](tmp_path)
    expected = read_image_header(path)

    def refuse(*args: object) -> None:
        raise AssertionError("SimpleITK was asked")

    monkeypatch.setattr(sitk, "ImageFileReader", refuse)
    assert read_image_header(path) == expected


def test_vector_and_4d_headers_leave_the_shape_to_the_reader(tmp_path: Path) -> None:
    """RGB and vector voxels come from SimpleITK with their components; a 4D file (channels for SimpleITKIO) and
    vector voxels have no header shape: the per-case check reads those images, the cluster asks for the whole budget."""
    rgb = read_image_header(_png(tmp_path / "rgb.png", np.zeros((6, 7, 3), np.uint8)))
    assert rgb == ImageHeader((7, 6), (1.0, 1.0), 3)
    vector = nibabel.Nifti1Image(np.zeros((5, 6, 7, 1, 3), np.float32), np.eye(4))
    vector.header.set_intent("vector")
    nibabel.save(vector, str(tmp_path / "vector.nii.gz"))
    assert read_image_header(tmp_path / "vector.nii.gz").components == 3
    four_d = read_image_header(_nib(tmp_path / "4d.nii.gz", (6, 5, 4, 3), (0.9, 0.8, 2.0, 1.0)))
    assert four_d.size == (6, 5, 4, 3) and four_d.array_shape(1) is None


def test_an_unreadable_header_raises_simpleitks_error(tmp_path: Path) -> None:
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(RuntimeError):
        read_image_header(tmp_path / "broken.nii.gz")
