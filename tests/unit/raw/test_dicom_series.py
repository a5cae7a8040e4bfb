"""DICOM series in: discovery (nested folders, any names, zips, DICOMDIR), geometry against SimpleITK's own series
reader, rescale, and the single-slice files that pydicom ships."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import write_series

from nnseg.raw.dicom.files import looks_like_dicom_input, open_dicom
from nnseg.raw.dicom.series import read_volume, to_sitk

pydicom = pytest.importorskip("pydicom")


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return q if np.linalg.det(q) > 0 else q * np.array([1, 1, -1])


def _sitk_reference(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_same_geometry(ours: sitk.Image, ref: sitk.Image) -> None:
    assert ours.GetSize() == ref.GetSize()
    assert np.allclose(ours.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    assert np.allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    assert np.allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-5)
    # the same voxel sits at the same physical point
    corner = tuple(s - 1 for s in ref.GetSize())
    assert np.allclose(ours.TransformIndexToPhysicalPoint(corner), ref.TransformIndexToPhysicalPoint(corner), atol=1e-4)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_oblique_series_matches_simpleitk_series_reader(tmp_path: Path, rng: np.random.Generator, modality: str) -> None:
    volume = rng.integers(-1000, 3000, size=(9, 20, 17)).astype(np.float64)
    direction = _rotation(rng)
    slope, intercept = (0.5, -1024.0) if modality == "CT" else (1.0, 0.0)
    folder = tmp_path / "in" / "deep" / "er"
    files = write_series(volume, folder, spacing=(0.7, 0.9, 2.5), origin=(10.0, -20.0, 30.0),
                         direction=direction.ravel(), modality=modality, slope=slope, intercept=intercept,
                         names="file_{:03d}")
    for k, f in enumerate(files):  # names that sort in neither slice order nor its reverse
        f.rename(folder / f"z{(k * 5) % 9}")
    with open_dicom(tmp_path / "in") as scan:
        assert scan.notes == [] and len(scan.series) == 1 and scan.series[0].modality == modality
        data, geometry, headers = read_volume(scan.series[0])
    ours, ref = to_sitk(data, geometry), _sitk_reference(folder)
    _assert_same_geometry(ours, ref)
    assert np.array_equal(sitk.GetArrayFromImage(ref).astype(np.float32), data)
    expected = np.round((volume - intercept) / slope) * slope + intercept
    assert np.array_equal(data, expected.astype(np.float32))  # slope/intercept applied, slices in order
    assert [int(h.InstanceNumber) for h in headers] == list(range(1, 10))


def test_nifti_case_round_trips_through_dicom_with_the_same_geometry(tmp_path: Path, rng: np.random.Generator) -> None:
    """A NIfTI volume -> DICOM series -> nnseg's reader gives the geometry nnseg's SimpleITK reader gives the NIfTI."""
    from nnseg.raw.image_io import read_images

    image = sitk.GetImageFromArray(rng.integers(0, 500, size=(8, 12, 10)).astype(np.float32))
    image.SetSpacing((1.5, 0.8, 3.0))
    image.SetOrigin((-1.0, -1.0, 1.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "case_0000.nii.gz"))
    write_series(sitk.GetArrayFromImage(image), tmp_path / "dicom", spacing=image.GetSpacing(),
                 origin=image.GetOrigin(), direction=image.GetDirection(), modality="MR")
    with open_dicom(tmp_path / "dicom") as scan:
        data, geometry, _ = read_volume(scan.series[0])
    sitk.WriteImage(to_sitk(data, geometry), str(tmp_path / "from_dicom_0000.nii.gz"))
    a, ga = read_images([tmp_path / "case_0000.nii.gz"], "SimpleITKIO")
    b, gb = read_images([tmp_path / "from_dicom_0000.nii.gz"], "SimpleITKIO")
    assert np.array_equal(a, b)
    assert np.allclose(ga.spacing, gb.spacing) and np.allclose(ga.origin, gb.origin)
    assert np.allclose(ga.direction, gb.direction)


def test_two_series_in_one_folder_are_two_cases_and_zip_and_dicomdir_work(tmp_path: Path,
                                                                           rng: np.random.Generator) -> None:
    from pydicom.fileset import FileSet

    a = write_series(rng.normal(0, 1, (3, 8, 8)), tmp_path / "mixed", names="a{}")
    b = write_series(rng.normal(0, 1, (4, 8, 6)), tmp_path / "mixed", modality="MR", names="b{}")
    (tmp_path / "notes.txt").write_text("not DICOM")
    with open_dicom(tmp_path / "mixed") as scan:
        assert sorted(len(s.headers) for s in scan.series) == [3, 4]
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in [*a, *b, tmp_path / "notes.txt"]:
            zf.write(f, f"x/{f.name}")
    assert looks_like_dicom_input(archive) and looks_like_dicom_input(tmp_path / "mixed")
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "case_0000.nii.gz").write_bytes(b"\x1f\x8b" + bytes(200))
    assert not looks_like_dicom_input(tmp_path / "nifti")
    with open_dicom(archive) as scan:
        assert sorted(len(s.headers) for s in scan.series) == [3, 4]
        assert scan.notes == ["skipped 1 file(s) that are not DICOM"]
    fs = FileSet()
    for f in a:
        fs.add(pydicom.dcmread(f))
    fs.write(tmp_path / "media")  # DICOMDIR + files under generated names
    fs._stage["t"].cleanup()  # pydicom's staging folder would otherwise only be removed (with a warning) at exit
    assert (tmp_path / "media" / "DICOMDIR").is_file()
    with open_dicom(tmp_path / "media") as scan:
        assert [len(s.headers) for s in scan.series] == [3] and scan.notes == []


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_single_slice_files(tmp_path: Path, name: str) -> None:
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file(name))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(path.read_bytes())
    ds = pydicom.dcmread(path)
    with open_dicom(tmp_path / "in") as scan:
        data, geometry, _ = read_volume(scan.series[0])
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    assert data.shape == (1, ds.Rows, ds.Columns)
    assert np.array_equal(data[0], (ds.pixel_array * slope + intercept).astype(np.float32))
    ref = sitk.ReadImage(str(path))
    ours = to_sitk(data, geometry)
    assert np.allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    assert np.allclose(ours.GetSpacing()[:2], ref.GetSpacing()[:2])
    assert np.allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-5)


def test_dicom_libraries_are_optional_and_lazy() -> None:
    import subprocess
    import sys

    from nnseg.raw.dicom import require

    with pytest.raises(ImportError, match=r"pip install nnseg\[dicom\]"):
        require("pydicom_that_is_not_installed")
    code = ("import sys, argparse; from nnseg.cli.workflow import predict_cmds; from nnseg.cli.services import dicom_cmds; "
            "import nnseg.raw.dicom.files, "
            "nnseg.predictions.dicom.dicomweb; predict_cmds.add_predict(argparse.ArgumentParser()); "
            "print(sorted(m for m in ('pydicom', 'highdicom', 'dicomweb_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
