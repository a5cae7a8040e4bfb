"""DICOM SEG writing: segments from dataset.json labels or regions, codes from a mapping file, derived UIDs,
frames in the source geometry, and dciodvfy's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dicom_synth import dciodvfy_errors, write_series

from nnseg.raw.dicom.seg import (DEFAULT_CATEGORY, DEFAULT_TYPE, derived_uid, label_names, load_seg_codes, make_segments,
                                 read_segmentation, write_segmentation)

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")


def test_label_names_for_labels_and_regions() -> None:
    assert label_names({"background": 0, "b": 2, "a": 1, "ignore": 3}) == [(1, "a"), (2, "b")]
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    assert label_names(regions, [1, 2, 3]) == [(1, "whole"), (2, "core"), (3, "enhancing")]


def test_seg_codes_file(tmp_path: Path) -> None:
    names = [(1, "liver"), (2, "tumour")]
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"liver": {"category": ["123037004", "SCT", "Anatomical Structure"],
                                          "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"}},
                                "2": {"type": ["108369006", "SCT", "Neoplasm"]}}))
    segments = make_segments(names, load_seg_codes(path, names))
    assert [(s.number, s.name, s.type[0], s.category[0]) for s in segments] == [
        (1, "liver", "10200004", "123037004"), (2, "tumour", "108369006", DEFAULT_CATEGORY[0])]
    assert make_segments(names)[0].type == DEFAULT_TYPE
    path.write_text(json.dumps({"spleen": {"type": ["1", "SCT", "x"]}}))
    with pytest.raises(ValueError, match="names label 'spleen', which the model does not predict; known:"):
        load_seg_codes(path, names)
    path.write_text(json.dumps({"liver": {"type": ["10200004", "SCT"]}}))
    with pytest.raises(ValueError, match=r"label 'liver' type: expected \[value, scheme, meaning\]"):
        load_seg_codes(path, names)
    with pytest.raises(FileNotFoundError, match="--seg-codes"):
        load_seg_codes(tmp_path / "nope.json", names)


def test_derived_uids_are_stable_valid_and_distinct() -> None:
    a = derived_uid("series", "1.2.3", "model")
    assert a == derived_uid("series", "1.2.3", "model") != derived_uid("series", "1.2.4", "model")
    assert a.startswith("2.25.") and len(a) <= 64 and pydicom.uid.UID(a).is_valid


def test_oblique_mr_seg_lies_on_the_source_slices_and_validates(tmp_path: Path, rng: np.random.Generator) -> None:
    from nnseg.raw.dicom.files import open_dicom
    from nnseg.raw.dicom.series import read_volume

    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    q = q if np.linalg.det(q) > 0 else -q
    write_series(rng.integers(0, 900, size=(10, 24, 20)).astype(float), tmp_path / "mr", modality="MR",
                 spacing=(0.9, 0.7, 3.0), origin=(5.0, 6.0, -7.0), direction=q.ravel())
    with open_dicom(tmp_path / "mr") as scan:
        _, _, headers = read_volume(scan.series[0])
    labels = np.zeros((10, 24, 20), np.uint8)
    labels[2:6, 3:9, 4:12] = 3
    labels[7, 10:20, 1:5] = 1  # label 2 is predicted nowhere: its segment is still described
    segments = make_segments(label_names({"background": 0, "a": 1, "b": 2, "c": 3}))
    path = tmp_path / "seg.dcm"
    with pytest.raises(ValueError, match="does not match the source series"):
        write_segmentation(labels[1:], headers, segments, path, series_uid="1.2.3", sop_uid="1.2.4", description="x",
                           version="0")
    with pytest.raises(ValueError, match=r"label map values \[4\] have no segment"):
        write_segmentation(labels + (labels == 3), headers, segments, path, series_uid="1.2.3", sop_uid="1.2.4",
                           description="x", version="0")
    write_segmentation(labels, headers, segments, path, series_uid="1.2.3", sop_uid="1.2.4", description="x",
                       version="0")
    back, names = read_segmentation(path, headers)
    assert np.array_equal(back, labels) and names == {1: "a", 2: "b", 3: "c"}
    assert int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames) < 10 * 3  # empty frames left out
    write_segmentation(np.zeros_like(labels), headers, segments, tmp_path / "empty.dcm", series_uid="1.2.5",
                       sop_uid="1.2.6", description="nothing found", version="0")
    assert not read_segmentation(tmp_path / "empty.dcm", headers)[0].any()
    seg = hd.seg.segread(path)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = next(h for h in headers if h.SOPInstanceUID == uid)
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in source.ImagePositionPatient], atol=1e-4)
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_generated_test_series_are_valid_image_iods(tmp_path: Path, modality: str) -> None:
    (first, *_) = write_series(np.zeros((2, 8, 8)), tmp_path, modality=modality, intercept=-1024.0 * (modality == "CT"))
    assert dciodvfy_errors(first) == []
