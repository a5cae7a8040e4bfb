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
        io = get_io(name)
        assert io.name == name and pickle.loads(pickle.dumps(io)) == io  # spawn workers receive readers
    assert set(IMAGE_IO.names()) - set(image_io.SELECTION_ORDER) == {"SimpleITKIOWithReorient"}  # by name only
    assert image_io.SELECTION_ORDER == ("NaturalImage2DIO", "SimpleITKIO", "Tiff3DIO", "NibabelIO", "NibabelIOWithReorient")


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
def test_synth_aniso_two_channels_match_nnunet_properties(shared_data: Path, expected_dir: Path) -> None:
    import json

    expected = json.loads((expected_dir / "Dataset901_SynthAniso" / "preprocessed_3d_fullres" / "syn_000.json").read_text())
    files = sorted((shared_data / "Dataset901_SynthAniso" / "imagesTr").glob("syn_000_000?.nii.gz"))
    io = determine_io(".nii.gz", files[0])
    data, geo = io.read_images(files)
    props = geo.to_properties()
    assert data.shape[0] == 2 and list(data.shape[1:]) == expected["shape_before_cropping"]
    assert {k: list(v) for k, v in props["sitk_stuff"].items()} == expected["sitk_stuff"]
    assert props["spacing"] == expected["spacing"]  # anisotropic, exact float values


@pytest.mark.golden
def test_isbi_spacing_is_nnunets_integer_placeholder(shared_data: Path, expected_dir: Path) -> None:
    import json

    expected = json.loads((expected_dir / "Dataset120_ISBI2012" / "preprocessed_2d" / "em_00.json").read_text())
    data, geo = read_images([shared_data / "ISBI2012_EM_2D" / "imagesTr" / "em_00_0000.png"], "NaturalImage2DIO")
    assert json.loads(json.dumps(list(geo.spacing))) == expected["spacing"] == [999, 1, 1]
    assert all(type(s) is int for s in geo.spacing)  # nnU-Net's fingerprint JSON holds [999, 1, 1]
    assert list(data.shape[1:]) == expected["shape_before_cropping"]


@pytest.mark.golden
def test_prediction_properties_and_writer_match_nnunet(shared_data: Path, expected_dir: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    pred_dir = expected_dir / "Dataset004_Hippocampus" / "model" / "predictions_tta"
    pkls = sorted(pred_dir.glob("*.pkl"))
    assert len(pkls) >= 10
    for pkl in pkls:
        with pkl.open("rb") as f:
            nn_props = pickle.load(f)  # nnU-Net's own file (plain pickle), read in a test only
        data, geo = read_images([shared_data / HIPPO / "imagesTr" / f"{pkl.stem}.nii.gz"], "SimpleITKIO")
        ours = geo.to_properties()
        assert ours["sitk_stuff"] == nn_props["sitk_stuff"]
        assert all(type(v) is tuple and all(type(x) is float for x in v) for v in ours["sitk_stuff"].values())
        assert ours["spacing"] == [float(s) for s in nn_props["spacing"]] and type(ours["spacing"]) is list
        assert tuple(data.shape[1:]) == tuple(nn_props["shape_before_cropping"])
    case = pkls[0].stem
    with pkls[0].open("rb") as f:
        nn_props = pickle.load(f)
    # write nnU-Net's prediction again from its properties dict: same voxels, header and pixel type
    nn_file = pred_dir / f"{case}.nii.gz"
    seg, _ = read_images([nn_file], "SimpleITKIO")
    out = tmp_path / f"{case}.nii.gz"
    write_seg(seg[0].astype(np.uint8), out, nn_props, io="SimpleITKIO")
    a, b = sitk.ReadImage(str(nn_file)), sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection(), a.GetPixelID()) == \
        (b.GetSpacing(), b.GetOrigin(), b.GetDirection(), b.GetPixelID())


# -------------------------------------------------------------------------------------- nibabel readers
NON_RAS = np.array([[0.0, 0.0, -2.0, 10.0], [-0.5, 0.0, 0.0, 5.0], [0.0, 0.75, 0.0, -3.0], [0.0, 0.0, 0.0, 1.0]])  # P, S, L


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel

    nibabel.save(nibabel.Nifti1Image(array, affine), str(path))


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_nibabel_round_trip_keeps_affine(tmp_path: Path, rng: np.random.Generator, ending: str) -> None:
    import nibabel

    vol = _labels((4, 5, 6), rng)  # nibabel (i, j, k)
    src = tmp_path / f"img{ending}"
    _write_nifti(src, vol, NON_RAS)
    io = get_io("NibabelIO")
    data, geo = io.read_images([src])
    assert data.dtype == np.float32 and data.shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(data[0], vol.transpose(2, 1, 0))
    assert geo.spacing == (2.0, 0.75, 0.5)  # zooms reversed
    np.testing.assert_array_equal(geo.to_properties()["nibabel_stuff"]["original_affine"], NON_RAS)
    out = tmp_path / f"seg{ending}"
    write_seg(data[0], out, geo)
    written = nibabel.load(str(out))
    np.testing.assert_array_equal(np.asarray(written.dataobj), vol)
    np.testing.assert_allclose(written.affine, NON_RAS)
    assert written.get_data_dtype() == np.uint8
    assert io.read_seg(out)[1] == geo


def test_nibabel_matches_simpleitk_axis_order(tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "img.nii.gz"
    _write_nifti(src, rng.normal(size=(4, 5, 6)).astype(np.float32), np.diag([0.5, 0.75, 2.0, 1.0]))
    a, ga = read_images([src], "NibabelIO")
    b, gb = read_images([src], "SimpleITKIO")
    np.testing.assert_array_equal(a, b)
    assert ga.spacing == gb.spacing == (2.0, 0.75, 0.5)


def test_nibabel_reorient_to_ras_and_back(tmp_path: Path, rng: np.random.Generator) -> None:
    import nibabel

    vol = _labels((4, 5, 6), rng)  # axes P, S, L
    src = tmp_path / "img.nii.gz"
    _write_nifti(src, vol, NON_RAS)
    io = get_io("NibabelIOWithReorient")
    data, geo = io.read_images([src])
    ras = vol.transpose(2, 0, 1)[::-1, ::-1, :]  # (L->R flipped, P->A flipped, S)
    np.testing.assert_array_equal(data[0], ras.transpose(2, 1, 0))
    assert geo.spacing == (0.75, 0.5, 2.0)
    stuff = geo.to_properties()["nibabel_stuff"]
    np.testing.assert_array_equal(stuff["original_affine"], NON_RAS)
    assert nibabel.aff2axcodes(stuff["reoriented_affine"]) == ("R", "A", "S")
    out = tmp_path / "seg.nii.gz"
    write_seg(data[0], out, geo)
    written = nibabel.load(str(out))
    np.testing.assert_array_equal(np.asarray(written.dataobj), vol)  # original orientation restored
    np.testing.assert_allclose(written.affine, NON_RAS)
    again, geo2 = io.read_seg(out)
    np.testing.assert_array_equal(again, data)
    assert geo2 == geo


def test_nibabel_refuses_non_3d(tmp_path: Path) -> None:
    src = tmp_path / "img.nii"
    _write_nifti(src, np.zeros((3, 4, 5, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=r"3D images only.*img\.nii"):
        read_images([src], "NibabelIO")


# ------------------------------------------------------------------------------------ NaturalImage2DIO
def test_natural_png_grey_and_rgb(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    grey = rng.integers(0, 256, size=(7, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "c_0000.png")
    Image.fromarray(rgb).save(tmp_path / "c_0001.png")
    data, geo = read_images([tmp_path / "c_0000.png", tmp_path / "c_0001.png"], "NaturalImage2DIO")
    assert data.dtype == np.float32 and data.shape == (4, 1, 7, 9)
    np.testing.assert_array_equal(data[0, 0], grey)
    np.testing.assert_array_equal(data[1:, 0], rgb.transpose(2, 0, 1))
    assert geo.to_properties() == {"spacing": [999.0, 1.0, 1.0]} and geo.spacing == (999, 1, 1)
    out = tmp_path / "seg.png"
    write_seg(data[:1, 0] > 100, out, geo)  # bool (1, X, Y) -> uint8 PNG
    back = np.array(Image.open(out))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, grey > 100)


def test_natural_rgba_palette_and_16bit_png(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    rgba = rng.integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert read_images([tmp_path / "rgba.png"], "NaturalImage2DIO")[0].shape == (4, 1, 4, 5)
    pal = Image.fromarray(rng.integers(0, 3, size=(4, 5), dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    data, _ = read_images([tmp_path / "pal.png"], "NaturalImage2DIO")  # palette -> RGB, as imageio
    np.testing.assert_array_equal(data[:, 0].transpose(1, 2, 0), np.array(pal.convert("RGB")))
    labels = np.zeros((1, 4, 5), np.int64)
    labels[0, 1, 2] = 300  # >= 255: written as 16 bit
    write_seg(labels, tmp_path / "seg16.png", Geometry(spacing=(999.0, 1.0, 1.0), reader="NaturalImage2DIO"))
    back, _ = read_images([tmp_path / "seg16.png"], "NaturalImage2DIO")
    np.testing.assert_array_equal(back[0], labels)


@pytest.mark.parametrize("ending", [".bmp", ".tif"])
def test_natural_bmp_and_2d_tif_round_trip(tmp_path: Path, rng: np.random.Generator, ending: str) -> None:
    labels = _labels((1, 6, 8), rng)
    geo = Geometry(spacing=(999.0, 1.0, 1.0), reader="NaturalImage2DIO")
    out = tmp_path / f"seg{ending}"
    write_seg(labels, out, geo)
    data, geo2 = read_images([out], "NaturalImage2DIO")
    np.testing.assert_array_equal(data[0], labels)
    assert data.shape == (1, 1, 6, 8) and geo2 == geo
    assert determine_io(ending, out).name == "NaturalImage2DIO"


def test_natural_writer_refuses_16bit_bmp_and_3d(tmp_path: Path) -> None:
    geo = Geometry(spacing=(999.0, 1.0, 1.0), reader="NaturalImage2DIO")
    with pytest.raises(ValueError, match=r"BMP.*\.png"):
        write_seg(np.full((1, 2, 2), 300), tmp_path / "s.bmp", geo)
    with pytest.raises(ValueError, match=r"\(1, X, Y\)"):
        write_seg(np.zeros((2, 2, 2), np.uint8), tmp_path / "s.png", geo)
    assert not list(tmp_path.iterdir())


@pytest.mark.golden
def test_isbi_png_reads_as_nnunet(shared_data: Path) -> None:
    from PIL import Image

    folder = shared_data / "ISBI2012_EM_2D"
    image = folder / "imagesTr" / "em_00_0000.png"
    io = determine_io(".png", image)
    assert io.name == "NaturalImage2DIO"
    data, geo = io.read_images([image])
    assert data.shape == (1, 1, 512, 512) and geo.spacing == (999.0, 1.0, 1.0)
    np.testing.assert_array_equal(data[0, 0], np.array(Image.open(image)))
    seg, _ = io.read_seg(folder / "labelsTr" / "em_00.png")
    assert set(np.unique(seg).tolist()) == {0.0, 1.0}


# -------------------------------------------------------------------------------------------- Tiff3DIO
@pytest.mark.parametrize("ending", [".tif", ".tiff"])
def test_tiff3d_round_trip_with_sidecar(tmp_path: Path, rng: np.random.Generator, ending: str) -> None:
    import json

    import tifffile

    stack = rng.normal(size=(3, 4, 5)).astype(np.float32)
    tifffile.imwrite(tmp_path / f"case_0000{ending}", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / f"case_0001{ending}", stack * 2, photometric="minisblack")
    (tmp_path / "case.json").write_text(json.dumps({"spacing": [2.5, 0.5, 0.75]}))
    data, geo = read_images([tmp_path / f"case_0000{ending}", tmp_path / f"case_0001{ending}"], "Tiff3DIO")
    assert data.shape == (2, 3, 4, 5) and data.dtype == np.float32
    np.testing.assert_array_equal(data[1], stack * 2)
    assert geo.to_properties() == {"spacing": [2.5, 0.5, 0.75]}
    labels = _labels((3, 4, 5), rng)
    out = tmp_path / "labels" / f"case{ending}"
    write_seg(labels, out, geo)
    assert json.loads((tmp_path / "labels" / "case.json").read_text()) == {"spacing": [2.5, 0.5, 0.75]}
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == 8  # zlib (ADOBE_DEFLATE)
    back, geo2 = get_io("Tiff3DIO").read_seg(out)
    np.testing.assert_array_equal(back[0], labels)
    assert geo2 == geo


def test_tiff3d_sidecar_missing_or_bad(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "case_0000.tif", np.zeros((2, 3, 4), np.uint8))
    with pytest.warns(UserWarning, match=r"case\.json.*\(1, 1, 1\)"):
        _, geo = read_images([tmp_path / "case_0000.tif"], "Tiff3DIO")
    assert geo.spacing == (1.0, 1.0, 1.0)
    (tmp_path / "case.json").write_text('{"spacing": [1, 2]}')
    with pytest.raises(ValueError, match=r"case\.json must hold"):
        read_images([tmp_path / "case_0000.tif"], "Tiff3DIO")
    tifffile.imwrite(tmp_path / "flat_0000.tif", np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match=r"3D stacks only.*flat_0000\.tif"):
        read_images([tmp_path / "flat_0000.tif"], "Tiff3DIO")


# ----------------------------------------------------------------------------- determine_io, all formats
def test_determine_io_picks_first_reader_that_can_read(tmp_path: Path, rng: np.random.Generator) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", rng.normal(size=(5, 6, 7)).astype(np.float32))
    tifffile.imwrite(tmp_path / "flat.tif", rng.normal(size=(6, 7)).astype(np.float32))
    assert determine_io(".tif").name == "NaturalImage2DIO"
    assert determine_io(".tif", tmp_path / "flat.tif").name == "NaturalImage2DIO"
    assert determine_io(".tif", tmp_path / "stack.tif").name == "Tiff3DIO"  # NaturalImage2DIO cannot read 3D
    assert determine_io(".tiff").name == "Tiff3DIO"
    assert determine_io(".png").name == "NaturalImage2DIO"
    assert determine_io(".bmp").name == "NaturalImage2DIO"
    assert determine_io(".nii").name == "NibabelIO"  # SimpleITKIO does not list .nii
    _write_nifti(tmp_path / "img.nii", np.zeros((2, 3, 4), np.float32), np.eye(4))
    assert determine_io(".nii", tmp_path / "img.nii").name == "NibabelIO"
    assert determine_io(".nii.gz", overwrite="NibabelIOWithReorient").name == "NibabelIOWithReorient"
    with pytest.raises(FileNotFoundError, match="nothere"):
        determine_io(".nii.gz", tmp_path / "nothere.nii.gz")


def test_corrupt_files_of_every_format_name_the_file(tmp_path: Path) -> None:
    for name, ending in (("NaturalImage2DIO", ".png"), ("Tiff3DIO", ".tif"), ("NibabelIO", ".nii"),
                         ("NibabelIOWithReorient", ".nii.gz")):
        bad = tmp_path / f"broken_0000{ending}"
        bad.write_bytes(b"\x00garbage" * 10)
        with pytest.raises(ValueError, match=rf"{name} cannot read .*broken_0000\{ending}"):
            read_images([bad], name)


def test_natural_tif_with_leading_colour_axis_is_moved_like_skimage(tmp_path: Path, rng: np.random.Generator) -> None:
    import tifffile

    planes = rng.integers(0, 256, size=(3, 6, 7), dtype=np.uint8)  # (C, H, W): skimage moves C to the end
    tifffile.imwrite(tmp_path / "rgb.tif", planes, photometric="minisblack")
    data, _ = read_images([tmp_path / "rgb.tif"], "NaturalImage2DIO")
    assert data.shape == (3, 1, 6, 7)
    np.testing.assert_array_equal(data[:, 0], planes)


# ---------------------------------------------------------------------------- SimpleITKIOWithReorient
def test_sitk_reorient_by_name_only_and_restores_orientation(tmp_path: Path, rng: np.random.Generator) -> None:
    import SimpleITK as sitk

    vol = _labels((4, 5, 6), rng)
    src = tmp_path / "img.nii.gz"
    _write_sitk(src, vol, (0.5, 0.75, 2.5), (1.0, -2.0, 3.5), DIR3)
    assert determine_io(".nii.gz", src).name == "SimpleITKIO"  # never chosen from the ending
    io = determine_io(".nii.gz", src, overwrite="SimpleITKIOWithReorient")
    data, geo = io.read_images([src])
    ras = sitk.DICOMOrient(sitk.ReadImage(str(src)), "RAS")
    np.testing.assert_array_equal(data[0], sitk.GetArrayFromImage(ras))
    props = geo.to_properties()
    assert props["sitk_stuff"]["original_orientation"] == \
        sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(DIR3)
    assert props["sitk_stuff"]["direction"] == ras.GetDirection() != DIR3
    assert Geometry.from_properties(props, reader=io.name) == geo
    out = tmp_path / "seg.nii.gz"
    write_seg(data[0], out, props, io=io)
    written = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), vol)
    assert written.GetDirection() == pytest.approx(DIR3) and written.GetOrigin() == pytest.approx((1.0, -2.0, 3.5))


def test_geometry_properties_round_trip_for_every_reader(tmp_path: Path, rng: np.random.Generator) -> None:
    import json

    import tifffile
    from PIL import Image

    _write_sitk(tmp_path / "a.nii.gz", _labels((3, 4, 5), rng), (0.5, 0.75, 2.5), (1.0, -2.0, 3.5), DIR3)
    _write_nifti(tmp_path / "b.nii", _labels((3, 4, 5), rng), NON_RAS)
    Image.fromarray(rng.integers(0, 255, (4, 5), dtype=np.uint8)).save(tmp_path / "c.png")
    tifffile.imwrite(tmp_path / "d.tif", _labels((3, 4, 5), rng), photometric="minisblack")
    (tmp_path / "d.json").write_text(json.dumps({"spacing": [1, 2.5, 3]}))
    cases = {"SimpleITKIO": "a.nii.gz", "SimpleITKIOWithReorient": "a.nii.gz", "NibabelIO": "b.nii",
             "NibabelIOWithReorient": "b.nii", "NaturalImage2DIO": "c.png", "Tiff3DIO": "d.tif"}
    for name, file in cases.items():
        _, geo = get_io(name).read_seg(tmp_path / file)
        assert geo.reader == name
        assert Geometry.from_properties(geo.to_properties(), reader=name) == geo, name


def test_truncated_nii_gz_is_refused_not_read_as_zeros(tmp_path: Path) -> None:
    """SimpleITK itself reads a truncated .nii.gz without complaint; nnseg must not."""
    import SimpleITK as sitk

    path = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((20, 30, 40)).astype(np.float32)), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=r"SimpleITKIO cannot read .*case_0000\.nii\.gz.*truncated"):
        get_io("SimpleITKIO").read_images([path])
