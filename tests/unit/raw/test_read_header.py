"""Every reader's ``read_header``: the ``(data.shape, geometry.spacing)`` its ``read_images`` returns, from the headers
alone (the per-case check before prediction and the cluster's task sizes plan big cases with it before any voxel is
read), or None where only reading tells."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nnseg.raw.image_io import IMAGE_IO, ImageReadError, get_io

PERMUTED = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # SimpleITK direction: every axis on another world axis
FLIPPED_PERMUTED = (0.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0)
# nibabel affines: i -> -y, j -> z, k -> -x (not RAS, axes permuted); an oblique one; LPS
AFFINE_PERMUTED = np.array([[0, 0, -2.5, 10], [-0.7, 0, 0, 5], [0, 1.2, 0, 3], [0, 0, 0, 1.0]])
AFFINE_OBLIQUE = np.array([[0.6, 0.9, 0, 1], [-0.8, 0.4, 0, 2], [0, 0, 3.0, 3], [0, 0, 0, 1.0]])
AFFINE_LPS = np.diag([-0.8, -0.9, 2.0, 1.0])


def _sitk(path: Path, shape_zyx: tuple[int, ...], spacing: tuple[float, ...],
          direction: tuple[float, ...] | None = None) -> Path:
    image = sitk.GetImageFromArray(np.zeros(shape_zyx, np.int16))
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def _nib(path: Path, shape: tuple[int, ...], affine: np.ndarray, zooms: tuple[float, ...] | None = None) -> Path:
    image = nibabel.Nifti1Image(np.zeros(shape, np.float32), affine)
    if zooms is not None:  # pixdim unlike the affine's scales (NibabelIO takes the zooms, the reorienting one not)
        image.header.set_zooms(zooms)
    nibabel.save(image, str(path))
    return path


def _tiff(path: Path, array: np.ndarray, spacing: list | None = None, **kwargs: object) -> Path:
    if not kwargs.get("imagej"):
        kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(str(path), array, **kwargs)
    if spacing is not None:
        case = path.name.split(".")[0].rsplit("_", 1)[0] if "_0" in path.name else path.name.split(".")[0]
        (path.parent / f"{case}.json").write_text(json.dumps({"spacing": spacing}))
    return path


def _pil(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


Files = Callable[[Path], list[Path]]
CASES: dict[str, tuple[str, Files]] = {
    "sitk 3d anisotropic": ("SimpleITKIO", lambda d: [_sitk(d / "a.nii.gz", (30, 44, 38), (0.9, 1.1, 3.4))]),
    "sitk 3d nrrd, 2 channels": ("SimpleITKIO", lambda d: [_sitk(d / f"a_000{c}.nrrd", (6, 9, 11), (0.7, 0.8, 2.5))
                                                          for c in range(2)]),
    "sitk 3d mha": ("SimpleITKIO", lambda d: [_sitk(d / "a.mha", (5, 12, 7), (1.2, 1.0, 0.5), PERMUTED)]),
    "sitk 2d": ("SimpleITKIO", lambda d: [_sitk(d / "a.nii.gz", (64, 80), (0.8, 0.6))]),
    "sitk reorient, permuted": ("SimpleITKIOWithReorient",
                                lambda d: [_sitk(d / "a.nii.gz", (5, 6, 7), (0.5, 0.8, 3.0), PERMUTED)]),
    "sitk reorient, flipped and permuted nrrd": (
        "SimpleITKIOWithReorient", lambda d: [_sitk(d / "a.nrrd", (5, 6, 7), (0.5, 0.8, 3.0), FLIPPED_PERMUTED)]),
    "sitk reorient, 2 channels": ("SimpleITKIOWithReorient", lambda d: [
        _sitk(d / f"a_000{c}.mha", (8, 6, 4), (0.7, 1.3, 2.0), FLIPPED_PERMUTED) for c in range(2)]),
    "nibabel .nii anisotropic": ("NibabelIO", lambda d: [_nib(d / "a.nii", (7, 8, 9), np.diag([0.7, 1.2, 2.5, 1]))]),
    "nibabel permuted, 2 channels": ("NibabelIO", lambda d: [_nib(d / f"a_000{c}.nii.gz", (7, 8, 9), AFFINE_PERMUTED)
                                                            for c in range(2)]),
    "nibabel zooms unlike the affine": ("NibabelIO",
                                        lambda d: [_nib(d / "a.nii", (7, 8, 9), AFFINE_PERMUTED, (3.0, 4.0, 5.0))]),
    "nibabel reorient, RAS": ("NibabelIOWithReorient",
                              lambda d: [_nib(d / "a.nii.gz", (7, 8, 9), np.diag([0.7, 1.2, 2.5, 1]))]),
    "nibabel reorient, LPS": ("NibabelIOWithReorient", lambda d: [_nib(d / "a.nii.gz", (7, 8, 9), AFFINE_LPS)]),
    "nibabel reorient, permuted": ("NibabelIOWithReorient", lambda d: [_nib(d / "a.nii", (7, 8, 9), AFFINE_PERMUTED)]),
    "nibabel reorient, oblique, 2 channels": ("NibabelIOWithReorient", lambda d: [
        _nib(d / f"a_000{c}.nii.gz", (6, 10, 5), AFFINE_OBLIQUE) for c in range(2)]),
    "nibabel reorient, zooms unlike the affine": (
        "NibabelIOWithReorient", lambda d: [_nib(d / "a.nii", (7, 8, 9), AFFINE_PERMUTED, (3.0, 4.0, 5.0))]),
    "tiff with sidecar": ("Tiff3DIO", lambda d: [_tiff(d / "c_0000.tif", np.zeros((5, 6, 7), np.uint8),
                                                       [3.0, 0.5, 0.7], compression="zlib")]),
    "tiff 2 channels, int sidecar": ("Tiff3DIO", lambda d: [
        _tiff(d / f"c_000{c}.tiff", np.zeros((4, 9, 3), np.uint16), [2, 1, 1]) for c in range(2)]),
    "tiff tiled float, no sidecar": ("Tiff3DIO", lambda d: [
        _tiff(d / "c_0000.tif", np.zeros((3, 32, 48), np.float32), tile=(16, 16))]),
    "tiff imagej stack": ("Tiff3DIO", lambda d: [_tiff(d / "c_0000.tif", np.zeros((6, 5, 4), np.uint8), [1.5, 1, 1],
                                                       imagej=True)]),
    "png grey": ("NaturalImage2DIO", lambda d: [_pil(d / "a.png", np.zeros((10, 12), np.uint8))]),
    "png rgb + rgba + 16-bit grey": ("NaturalImage2DIO", lambda d: [
        _pil(d / "a_0000.png", np.zeros((10, 12, 3), np.uint8)),
        _pil(d / "a_0001.png", np.zeros((10, 12, 4), np.uint8)),
        _pil(d / "a_0002.png", np.zeros((10, 12), np.uint16))]),
    "png palette": ("NaturalImage2DIO", lambda d: [_pil(d / "a.png", np.zeros((10, 12, 3), np.uint8), "P")]),
    "bmp rgb": ("NaturalImage2DIO", lambda d: [_pil(d / "a.bmp", np.zeros((9, 13, 3), np.uint8))]),
    "bmp palette": ("NaturalImage2DIO", lambda d: [_pil(d / "a.bmp", np.zeros((9, 13), np.uint8), "P")]),
    "tif grey": ("NaturalImage2DIO", lambda d: [_tiff(d / "a.tif", np.zeros((10, 12), np.uint8))]),
    "tif rgb": ("NaturalImage2DIO", lambda d: [_tiff(d / "a.tif", np.zeros((10, 12, 3), np.uint8), photometric="rgb")]),
    "tif colour first": ("NaturalImage2DIO", lambda d: [
        _tiff(d / "a.tif", np.zeros((3, 10, 12), np.uint8))]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_header_is_the_shape_and_spacing_the_reader_returns(tmp_path: Path, case: str) -> None:
    reader, make = CASES[case]
    files = make(tmp_path)
    io = get_io(reader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Tiff3DIO without a sidecar warns when it reads
        data, geometry = io.read_images(files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the header warns of nothing (the read does)
        header = io.read_header(files)
        assert io.read_header([str(f) for f in files]) == header
    assert header is not None
    shape, spacing = header
    assert shape == data.shape and all(isinstance(s, int) for s in shape)
    assert spacing == pytest.approx(geometry.spacing, rel=1e-6) and len(spacing) == len(geometry.spacing)


def test_every_registered_reader_has_a_header_case() -> None:
    assert {reader for reader, _ in CASES.values()} == set(IMAGE_IO.names())


def test_the_header_reads_no_voxels(tmp_path: Path) -> None:
    """A NIfTI cut off after its header (the voxels gone) and a TIFF whose pages cannot be decoded: the read fails, the
    header still answers."""
    nii = _nib(tmp_path / "a.nii", (20, 30, 40), AFFINE_PERMUTED)
    nii.write_bytes(nii.read_bytes()[:400])
    for reader in ("NibabelIO", "NibabelIOWithReorient"):
        with pytest.raises(ImageReadError):
            get_io(reader).read_images([nii])
    assert get_io("NibabelIO").read_header([nii]) == ((1, 40, 30, 20), (2.5, 1.2000000476837158, 0.699999988079071))
    assert get_io("NibabelIOWithReorient").read_header([nii])[0] == (1, 30, 20, 40)  # type: ignore[index]
    tif = _tiff(tmp_path / "s_0000.tif", np.zeros((4, 64, 64), np.uint8), [2.0, 1.0, 1.0], compression="zlib")
    raw = bytearray(tif.read_bytes())
    start = raw.index(b"x\x9c")  # the zlib stream of the first page
    raw[start:start + 4] = b"\xff" * 4
    tif.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError):
        get_io("Tiff3DIO").read_images([tif])
    assert get_io("Tiff3DIO").read_header([tif]) == ((1, 4, 64, 64), (2.0, 1.0, 1.0))


def test_layouts_only_the_read_tells_give_none(tmp_path: Path) -> None:
    """4D and vector files (SimpleITK), 2D files for the 3D readers, an unreadable file: None, and the read decides."""
    four_d = tmp_path / "4d.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((6, 5, 4, 3), np.float32), np.eye(4)), str(four_d))
    assert get_io("SimpleITKIO").read_header([four_d]) is None
    assert get_io("SimpleITKIO").read_images([four_d])[0].shape == (3, 4, 5, 6)  # 4D: channels, read
    assert get_io("SimpleITKIOWithReorient").read_header([four_d]) is None
    assert get_io("NibabelIO").read_header([four_d]) is None
    rgb = _pil(tmp_path / "rgb.png", np.zeros((6, 7, 3), np.uint8))
    assert get_io("SimpleITKIO").read_header([rgb]) is None  # vector pixels: the read refuses them
    flat = _tiff(tmp_path / "flat.tif", np.zeros((10, 12), np.uint8))
    assert get_io("Tiff3DIO").read_header([flat]) is None
    grey_alpha = _pil(tmp_path / "la.png", np.zeros((6, 7, 2), np.uint8))
    assert get_io("NaturalImage2DIO").read_header([grey_alpha]) is None
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    for reader in ("SimpleITKIO", "NibabelIO"):
        assert get_io(reader).read_header([broken]) is None
        with pytest.raises(ImageReadError):
            get_io(reader).read_images([broken])


def test_files_that_disagree_fail_as_the_read_fails(tmp_path: Path) -> None:
    small = _sitk(tmp_path / "a_0000.nii.gz", (5, 6, 7), (1.0, 1.0, 1.0))
    big = _sitk(tmp_path / "a_0001.nii.gz", (5, 6, 8), (1.0, 1.0, 1.0))
    other_spacing = _sitk(tmp_path / "a_0002.nii.gz", (5, 6, 7), (1.0, 1.0, 2.0))
    io = get_io("SimpleITKIO")
    for files, what in (([small, big], "shape"), ([small, other_spacing], "spacing")):
        with pytest.raises(ImageReadError, match=f"differ in {what}"):
            io.read_images(files)
        with pytest.raises(ImageReadError, match=f"differ in {what}"):
            io.read_header(files)
    with pytest.raises(FileNotFoundError):
        io.read_header([tmp_path / "missing.nii.gz"])
    bad_sidecar = _tiff(tmp_path / "t_0000.tif", np.zeros((3, 4, 5), np.uint8), [1, 1])
    with pytest.raises(ImageReadError, match="three positive numbers"):
        get_io("Tiff3DIO").read_header([bad_sidecar])
