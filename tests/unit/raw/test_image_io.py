"""Image readers/writers: round trips per format, nnU-Net's selection rule, golden headers, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from nnseg._types import Geometry
from nnseg.raw import image_io
from nnseg.raw.image_io import IMAGE_IO, ImageReadError, determine_io, get_io, read_images, write_seg

HIPPO = "Task04_Hippocampus"


def _labels(shape: tuple[int, ...], rng: np.random.Generator, high: int = 4) -> np.ndarray:
    return rng.integers(0, high, size=shape).astype(np.int16)


def _write_sitk(path: Path, array: np.ndarray, spacing, origin, direction) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


DIR3 = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a rotation: not the identity, not RAS/LPS-aligned as stored


# ---------------------------------------------------------------------------------------------- SimpleITKIO
@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha", ".gipl"])
def test_sitk_round_trip_keeps_array_and_header(tmp_path: Path, rng: np.random.Generator, ending: str) -> None:
    seg = _labels((4, 5, 6), rng)  # array (z, y, x) order = nnU-Net (X, Y, Z)
    src = tmp_path / f"img{ending}"
    _write_sitk(src, seg, (0.5, 0.75, 2.5), (1.0, -2.0, 3.5), DIR3)  # float32-exact (NIfTI, GIPL)
    io = get_io("SimpleITKIO")
    data, geo = io.read_images([src])
    assert data.dtype == np.float32 and data.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(data[0], seg)
    assert geo.spacing == (2.5, 0.75, 0.5)  # SimpleITK's spacing reversed
    assert geo.sitk_spacing == (0.5, 0.75, 2.5) and geo.origin == (1.0, -2.0, 3.5)
    assert geo.direction == (DIR3 if ending != ".gipl" else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # GIPL: no direction
    out = tmp_path / f"out{ending}"
    io.write_seg(data[0].astype(np.int64), out, geo)
    back, geo2 = io.read_seg(out)
    np.testing.assert_array_equal(back[0], seg)
    assert geo2 == geo
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_sitk_2d_file_gives_pseudo_3d_spacing(tmp_path: Path, rng: np.random.Generator) -> None:
    seg = _labels((5, 6), rng)
    src = tmp_path / "img.nii.gz"
    _write_sitk(src, seg, (0.25, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    data, geo = read_images([src], "SimpleITKIO")
    assert data.shape == (1, 1, 5, 6)
    assert geo.spacing == pytest.approx((0.5 * 999, 0.5, 0.25))
    assert geo.sitk_spacing == (0.25, 0.5)
    out = tmp_path / "seg.nii.gz"
    write_seg(data[0], out, geo)  # (1, X, Y) for a 2D geometry
    back, geo2 = read_images([out], "SimpleITKIO")
    np.testing.assert_array_equal(back, data)
    assert geo2 == geo


def test_sitk_4d_file_is_multichannel(tmp_path: Path, rng: np.random.Generator) -> None:
    import SimpleITK as sitk

    arr = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)  # (t, z, y, x)
    img = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr])
    img.SetSpacing((0.5, 0.6, 0.7, 1.0))
    src = tmp_path / "img.nii.gz"
    sitk.WriteImage(img, str(src))
    data, geo = read_images([src], "SimpleITKIO")
    assert data.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(data, arr)
    assert geo.spacing == pytest.approx((0.7, 0.6, 0.5))
    out = tmp_path / "seg.nii.gz"
    write_seg(np.ones((3, 4, 5), np.uint8), out, geo)  # a 3D label map for a 4D image: first three axes
    back, geo2 = read_images([out], "SimpleITKIO")
    assert back.shape == (1, 3, 4, 5) and geo2.spacing == pytest.approx(geo.spacing)


def test_sitk_channels_stack_and_mismatch_errors_name_files(tmp_path: Path, rng: np.random.Generator) -> None:
    a, b, c = tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz", tmp_path / "c_0002.nii.gz"
    _write_sitk(a, _labels((3, 4, 5), rng), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), DIR3)
    _write_sitk(b, _labels((3, 4, 5), rng), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), DIR3)
    _write_sitk(c, _labels((3, 4, 6), rng), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), DIR3)
    data, _ = read_images([a, b], "SimpleITKIO")
    assert data.shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"differ in shape.*c_0002\.nii\.gz"):
        read_images([a, c], "SimpleITKIO")
    _write_sitk(c, _labels((3, 4, 5), rng), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), DIR3)
    with pytest.raises(ValueError, match=r"differ in spacing.*c_0002"):
        read_images([a, c], "SimpleITKIO")
    _write_sitk(c, _labels((3, 4, 5), rng), (1.0, 1.0, 2.0), (5.0, 0.0, 0.0), DIR3)
    with pytest.warns(UserWarning, match="differ in origin"):
        read_images([a, c], "SimpleITKIO")


def test_seg_writer_dtype_follows_nnunet(tmp_path: Path) -> None:
    import SimpleITK as sitk

    geo = Geometry(spacing=(1.0, 1.0, 1.0), reader="SimpleITKIO", origin=(0.0,) * 3,
                   direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), sitk_spacing=(1.0,) * 3)
    for top, pixel in ((254, sitk.sitkUInt8), (255, sitk.sitkUInt16)):
        seg = np.zeros((2, 2, 2), np.int32)
        seg[0, 0, 0] = top
        write_seg(seg, tmp_path / "s.nrrd", geo)
        assert sitk.ReadImage(str(tmp_path / "s.nrrd")).GetPixelID() == pixel
    with pytest.raises(ValueError, match=r"\[-1, -1\]"):
        write_seg(-np.ones((2, 2, 2), np.int32), tmp_path / "neg.nrrd", geo)
    with pytest.raises(ValueError, match="must be 3D"):
        write_seg(np.zeros((2, 2), np.uint8), tmp_path / "flat.nrrd", geo)
    assert not (tmp_path / "neg.nrrd").exists()


# ------------------------------------------------------------------------------------------- determine_io
def test_determine_io_without_example_follows_nnunet_order() -> None:
    assert determine_io(".nii.gz").name == "SimpleITKIO"
    assert determine_io(".NII.GZ").name == "SimpleITKIO"
    assert determine_io(".nrrd").name == "SimpleITKIO"
    with pytest.raises(ValueError, match=r"'\.jpg'.*supported endings"):
        determine_io(".jpg")


def test_determine_io_overwrite_and_unknown_name() -> None:
    assert determine_io(".nii.gz", overwrite="None").name == "SimpleITKIO"
    assert determine_io(".png", overwrite="SimpleITKIO").name == "SimpleITKIO"
    with pytest.raises(ValueError, match=r"unknown image reader/writer 'FooIO'.*SimpleITKIO"):
        determine_io(".nii.gz", overwrite="FooIO")


def test_corrupt_file_gives_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad_0000.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"SimpleITKIO cannot read .*bad_0000\.nii\.gz"):
        read_images([bad], "SimpleITKIO")
    with pytest.raises(ValueError, match=r"can read .*bad_0000\.nii\.gz"):
        determine_io(".nii.gz", bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_images([tmp_path / "missing.nii.gz"], "SimpleITKIO")
    with pytest.raises(TypeError, match="sequence"):
        read_images(bad, "SimpleITKIO")  # type: ignore[arg-type]


def test_registry_names_are_nnunet_class_names() -> None:
    for name in IMAGE_IO:
        cls = IMAGE_IO[name]
        assert cls.name == name == cls.__name__
        assert get_io(name).name == name
    assert set(image_io.SELECTION_ORDER) >= set(IMAGE_IO.names())


# ------------------------------------------------------------------------------------ golden (nnU-Net v2)
@pytest.mark.golden
def test_hippocampus_geometry_matches_nnunet_properties(shared_data: Path, expected_dir: Path) -> None:
    import json

    folder = expected_dir / "Dataset004_Hippocampus" / "preprocessed_3d_fullres"
    jsons = sorted(folder.glob("*.json"))
    assert jsons
    for js in jsons:
        case = js.stem
        expected = json.loads(js.read_text())
        io = determine_io(".nii.gz", shared_data / HIPPO / "imagesTr" / f"{case}.nii.gz")
        data, geo = io.read_images([shared_data / HIPPO / "imagesTr" / f"{case}.nii.gz"])
        props = geo.to_properties()
        assert {k: list(v) for k, v in props["sitk_stuff"].items()} == expected["sitk_stuff"]
        assert props["spacing"] == expected["spacing"]
        assert list(data.shape[1:]) == expected["shape_before_cropping"]


@pytest.mark.golden
def test_prediction_properties_and_writer_match_nnunet(shared_data: Path, expected_dir: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    pred_dir = expected_dir / "Dataset004_Hippocampus" / "model" / "predictions_tta"
    case = "hippocampus_020"
    with (pred_dir / f"{case}.pkl").open("rb") as f:
        nn_props = pickle.load(f)  # nnU-Net's own file (plain pickle), read in a test only
    data, geo = read_images([shared_data / HIPPO / "imagesTr" / f"{case}.nii.gz"], "SimpleITKIO")
    ours = geo.to_properties()
    assert ours["sitk_stuff"] == nn_props["sitk_stuff"]
    assert all(type(v) is tuple and all(type(x) is float for x in v) for v in ours["sitk_stuff"].values())
    assert ours["spacing"] == [float(s) for s in nn_props["spacing"]] and type(ours["spacing"]) is list
    assert tuple(data.shape[1:]) == tuple(nn_props["shape_before_cropping"])
    # write nnU-Net's prediction again from its properties dict: same voxels, header and pixel type
    nn_file = pred_dir / f"{case}.nii.gz"
    seg, _ = read_images([nn_file], "SimpleITKIO")
    out = tmp_path / f"{case}.nii.gz"
    write_seg(seg[0].astype(np.uint8), out, nn_props, io="SimpleITKIO")
    a, b = sitk.ReadImage(str(nn_file)), sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection(), a.GetPixelID()) == \
        (b.GetSpacing(), b.GetOrigin(), b.GetDirection(), b.GetPixelID())
