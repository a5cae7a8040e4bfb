"""UIDs from DICOM data never form paths (issue 24.1), and what a SEG needs from its source series (issue 23.13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_synth import write_series

from nnseg.raw.dicom.uids import DicomUidError, check_uid, inside, uid_file_stem

pydicom = pytest.importorskip("pydicom")


@pytest.mark.parametrize("value", ["1.2.840.10008.5.1.4.1.1.2", "2.25.329800735698586629295641978511506172918", "0",
                                   "1.2.840.0001"])
def test_uids_of_the_grammar_pass(value: str) -> None:
    assert check_uid(f"{value} \x00", what="SeriesInstanceUID", where="f.dcm") == value
    assert set(uid_file_stem(value)) <= set("0123456789_")


@pytest.mark.parametrize(("value", "message"), [
    ("/abs/path/evil", "is not a DICOM UID"), ("../../evil", "is not a DICOM UID"), ("1.2.abc", "is not a DICOM UID"),
    ("1..2", "is not a DICOM UID"), ("1.2.", "is not a DICOM UID"), ("C:\\evil", "is not a DICOM UID"),
    ("1." + "2" * 70, "got 72"), ("1.2\n3", "is not a DICOM UID"), ("", "has no SeriesInstanceUID"),
    (None, "has no SeriesInstanceUID")])
def test_values_that_are_no_uid_are_refused_naming_where(value: str | None, message: str) -> None:
    with pytest.raises(DicomUidError, match="^f.dcm ") as info:
        check_uid(value, what="SeriesInstanceUID", where="f.dcm")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["../x.dcm", "/abs/x.dcm", "a/b.dcm", "..", "", "."])
def test_output_names_that_leave_their_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="would leave the folder"):
        inside(tmp_path, name)
    assert inside(tmp_path, "1_2_3.dcm") == tmp_path / "1_2_3.dcm"


def _headers(tmp_path: Path, n: int, spacing_z: float = 2.5) -> list:
    files = write_series(np.zeros((n, 8, 8)), tmp_path / "s", spacing=(0.8, 0.8, spacing_z))
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def test_seg_source_derives_the_slice_thickness_and_fills_type2_attributes(tmp_path: Path) -> None:
    from nnseg.raw.dicom.seg_source import seg_source

    headers = _headers(tmp_path, 4)
    for ds in headers:
        del ds.SliceThickness, ds.PatientName, ds.StudyID
    source = seg_source(headers, "1.2.3")
    first = source.headers[0]
    assert float(first.SliceThickness) == pytest.approx(2.5) and first.PatientName == "" and first.StudyID == ""
    assert "SliceThickness" not in headers[0]  # the source headers are not changed
    assert any("SliceThickness (0018,0050) is missing; the SEG uses 2.5 mm" in n for n in source.notes)
    assert any("PatientName (0010,0010), StudyID (0020,0010) missing" in n for n in source.notes)
    empty = _headers(tmp_path / "e", 3)
    for ds in empty:
        ds.SliceThickness = None
    assert float(seg_source(empty, "1.2.3").headers[0].SliceThickness) == pytest.approx(2.5)


@pytest.mark.parametrize(("change", "tag"), [
    (lambda ds: delattr(ds, "FrameOfReferenceUID"), "FrameOfReferenceUID (0020,0052)"),
    (lambda ds: delattr(ds, "StudyInstanceUID"), "StudyInstanceUID (0020,000D)"),
    (lambda ds: setattr(ds, "SOPInstanceUID", "1.2.x"), "SOPInstanceUID (0008,0018)")])
@pytest.mark.filterwarnings("ignore:.*for VR UI")
def test_seg_source_refuses_what_cannot_be_derived(tmp_path: Path, change, tag: str) -> None:  # type: ignore[no-untyped-def]
    from nnseg.raw.dicom.seg_source import SegSourceError, seg_source

    headers = _headers(tmp_path, 3)
    change(headers[0])
    with pytest.raises(SegSourceError, match=f"series 1.2.3: .*{tag.split()[0]}") as info:
        seg_source(headers, "1.2.3")
    assert tag in str(info.value) and "--output-format nifti" in str(info.value)


def test_a_single_slice_without_thickness_is_refused_naming_the_tag(tmp_path: Path) -> None:
    from nnseg.raw.dicom.seg_source import SegSourceError, seg_source

    headers = _headers(tmp_path, 1)
    del headers[0].SliceThickness
    with pytest.raises(SegSourceError, match=r"series 1.2.3: .* single slice without SliceThickness \(0018,0050\)"):
        seg_source(headers, "1.2.3")
    headers[0].SpacingBetweenSlices = "3"
    assert float(seg_source(headers, "1.2.3").headers[0].SliceThickness) == 3.0

