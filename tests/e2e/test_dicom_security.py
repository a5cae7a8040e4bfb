"""DICOM input from a folder or zip (issue 24.1, 24.18, 23.13): no value read from a file forms a path, a one-slice
series is refused naming the series, and a SEG is made on a series without SliceThickness (and other Type 2
attributes highdicom reads) or refused before predicting, naming series, tag and fix.

Every refusal: exit code 1, one line, nothing written (the output folder is not even created), no file outside it,
no temporary folder left.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import dciodvfy_errors, write_series
from golden_model import IMAGES, install_golden_model

from nnseg.cli.main import main

pydicom = pytest.importorskip("pydicom")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*for VR UI")]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_golden_model(tmp_path_factory.mktemp("dicom_security") / "results")


def _hippocampus() -> sitk.Image:
    return sitk.ReadImage(str(IMAGES / "hippocampus_020.nii.gz"))


def _series(folder: Path, *, change: Callable[[Any], None] | None = None, n: int | None = None) -> list[Path]:
    image = _hippocampus()
    volume = np.round(sitk.GetArrayFromImage(image))
    files = write_series(volume[:n] if n else volume, folder, spacing=image.GetSpacing(), origin=image.GetOrigin(),
                         direction=image.GetDirection(), modality="MR")
    for f in files if change else []:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)
    return files


def _predict(model: Path, inputs: Path, out: Path, *extra: str) -> int:
    return main(["predict-from-modelfolder", "-i", str(inputs), "-o", str(out), "-m", str(model), "-f", "0",
                 "-device", "cpu", "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0", *extra])


def _one_error_line(err: str, *fragments: str) -> str:
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _set_uid(value: str | None) -> Callable[[Any], None]:
    def change(ds: Any) -> None:
        if value is None:
            del ds.SeriesInstanceUID
        else:
            ds.SeriesInstanceUID = value
    return change


BAD_UIDS = {"absolute path": "ABS", "parent folders": "../../../evil", "letters": "1.2.evil",
            "too long": "1." + "2" * 70, "missing": None}


@pytest.mark.parametrize("kind", sorted(BAD_UIDS))
def test_a_series_uid_that_is_no_uid_is_refused_before_anything_is_written(model: Path, tmp_path: Path, scratch: Path,
                                                                          capsys: pytest.CaptureFixture,
                                                                          kind: str) -> None:
    value = BAD_UIDS[kind]
    value = str(tmp_path / "evil") if value == "ABS" else value
    files = _series(tmp_path / "in" / "a" / "b", change=_set_uid(value), n=6)
    assert _predict(model, tmp_path / "in", tmp_path / "out") == 1
    expected = "has no SeriesInstanceUID" if value is None else "is not a DICOM UID"
    _one_error_line(capsys.readouterr().err, str(files[0]), "SeriesInstanceUID (0020,000E)", expected)
    assert not (tmp_path / "out").exists() and list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "tmp"]  # nothing beside the output folder
    assert not list(tmp_path.rglob("*evil*")) and not list(Path("/").glob("evil*"))


@pytest.mark.parametrize("entry", ["zip", "dicom-seg", "convert-dicom"])
def test_an_absolute_path_uid_is_refused_on_every_entry(model: Path, tmp_path: Path, scratch: Path,
                                                        capsys: pytest.CaptureFixture, roots_env: dict[str, str],
                                                        entry: str) -> None:
    evil = tmp_path / "evil"
    _series(tmp_path / "in", change=_set_uid(str(evil)), n=6)
    if entry == "zip":
        with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
            for f in sorted((tmp_path / "in").iterdir()):
                zf.write(f, f"dir/{f.name}")
        assert _predict(model, tmp_path / "series.zip", tmp_path / "out") == 1
        where = "zip entry dir/IM0000"
    elif entry == "dicom-seg":
        assert _predict(model, tmp_path / "in", tmp_path / "out", "--output-format", "dicom-seg") == 1
        where = str(tmp_path / "in" / "IM0000")
    else:
        assert main(["convert-dicom", "-i", str(tmp_path / "in"), "-d", "601", "-n", "Evil"], env=roots_env) == 1
        where = str(tmp_path / "in" / "IM0000")
    _one_error_line(capsys.readouterr().err, where, f"{str(evil)!r}", "is not a DICOM UID")
    assert not (tmp_path / "out").exists() and list((tmp_path / "raw").iterdir()) == [] and list(scratch.iterdir()) == []
    assert not list(tmp_path.glob("evil*")) and not list(tmp_path.rglob("*evil_0000*"))


def test_a_one_slice_series_is_refused_naming_the_series_not_a_temporary_file(model: Path, tmp_path: Path,
                                                                              scratch: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    files = _series(tmp_path / "in", n=1)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert _predict(model, tmp_path / "in", tmp_path / "out") == 1
    line = _one_error_line(capsys.readouterr().err, f"series {uid} has a single slice", "3D model",
                           "whole volume series")
    assert "nnseg-dicom" not in line and ".nii.gz" not in line
    assert not (tmp_path / "out").exists() and list(scratch.iterdir()) == []


def _no_thickness_nor_type2(ds: Any) -> None:
    for keyword in ("SliceThickness", "PatientName", "PatientBirthDate", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName", "StudyTime"):
        delattr(ds, keyword)


def test_a_seg_is_made_on_a_series_without_slice_thickness_and_type2_attributes(model: Path, tmp_path: Path,
                                                                                scratch: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    import highdicom as hd

    files = _series(tmp_path / "in", change=_no_thickness_nor_type2)
    assert _predict(model, tmp_path / "in", tmp_path / "out", "--output-format", "dicom-seg") == 0
    err = capsys.readouterr().err
    note = f"SliceThickness (0018,0050) is missing; the SEG uses {_hippocampus().GetSpacing()[2]:.6g} mm"
    assert note in err and "PatientName (0010,0010)" in err
    assert err.index(note) < err.index("predicted 1 DICOM series")
    (seg_file,) = (tmp_path / "out").glob("*.dcm")
    seg = hd.seg.segread(seg_file)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(_hippocampus().GetSpacing()[2])
    assert seg.PatientName == "" and seg.StudyID == ""
    assert dciodvfy_errors(seg_file) == []
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                               combine_segments=True)
    assert labels.shape[0] == len(files) and labels.max() == 2
    assert list(scratch.iterdir()) == []


def test_a_seg_source_attribute_that_cannot_be_derived_is_refused_before_predicting(
        model: Path, tmp_path: Path, scratch: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnseg.predictions.dicom.dicom_predict as dicom_predict

    def no_prediction(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the series must be refused before predicting")

    monkeypatch.setattr(dicom_predict, "predict", no_prediction)
    files = _series(tmp_path / "in", change=lambda ds: delattr(ds, "FrameOfReferenceUID"), n=6)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert _predict(model, tmp_path / "in", tmp_path / "out", "--output-format", "dicom-seg") == 1
    _one_error_line(capsys.readouterr().err, f"series {uid}", "FrameOfReferenceUID (0020,0052)", "export the series "
                    "again", "--output-format nifti")
    assert not (tmp_path / "out").exists() and list(scratch.iterdir()) == []


@pytest.mark.parametrize("output_format", ["nifti", "dicom-seg"])
def test_a_refusal_by_the_prediction_checks_names_the_series(model: Path, tmp_path: Path, scratch: Path,
                                                             capsys: pytest.CaptureFixture, output_format: str) -> None:
    """A slice spacing the model would upsample more than 16 times (checked once the image is read): the message
    names the series, never the temporary file it was converted to."""
    image = _hippocampus()
    files = write_series(np.round(sitk.GetArrayFromImage(image))[:6], tmp_path / "in", spacing=(1.0, 1.0, 40.0),
                         modality="MR")
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert _predict(model, tmp_path / "in", tmp_path / "out", "--output-format", output_format) == 1
    line = _one_error_line(capsys.readouterr().err, f"series {uid}: spacing", "would upsample axis")
    assert "nnseg-dicom" not in line and "_0000" not in line
    assert not (tmp_path / "out").exists() and list(scratch.iterdir()) == []
