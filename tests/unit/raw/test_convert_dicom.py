"""``nnseg convert-dicom``: DICOM series + DICOM SEG (or NIfTI) labels -> a raw dataset that ``verify`` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import write_series

from nnseg.cli.main import main
from nnseg.raw.dicom.seg import derived_uid, label_names, make_segments, write_segmentation

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")


def _case(folder: Path, rng: np.random.Generator, n: int) -> tuple[list[Path], np.ndarray]:
    files = write_series(rng.integers(-200, 200, size=(6 + n, 16, 12)).astype(float), folder, spacing=(0.8, 0.8, 2.0),
                         origin=(0.0, 0.0, 5.0 * n), intercept=-1024.0)
    labels = np.zeros((6 + n, 16, 12), np.uint8)
    labels[1:4, 2:8, 3:9] = 1
    labels[4:6, 9:14, 2:5] = 2
    return files, labels


def test_series_with_seg_labels_become_a_raw_dataset(tmp_path: Path, roots_env: dict[str, str],
                                                     rng: np.random.Generator) -> None:
    truth = {}
    for n in range(2):
        files, labels = _case(tmp_path / "dicom" / f"patient{n}", rng, n)
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        # the two SEGs number their segments differently: label values follow the names (ties: alphabetical)
        names = [(1, "tumour"), (2, "liver")] if n == 0 else [(1, "liver"), (2, "tumour")]
        seg_labels = labels if n == 0 else np.array([0, 2, 1], np.uint8)[labels]
        write_segmentation(seg_labels, sources, make_segments(names), tmp_path / "segs" / f"seg{n}.dcm",
                           series_uid=derived_uid(str(n)), sop_uid=derived_uid("i", str(n)), description="t", version="0")
        truth[str(sources[0].SeriesInstanceUID)] = np.array([0, 2, 1], np.uint8)[labels]  # 1 is the tumour in both
    write_series(np.zeros((3, 16, 12)), tmp_path / "dicom" / "unlabelled")
    assert main(["convert-dicom", "-i", str(tmp_path / "dicom"), "-l", str(tmp_path / "segs"), "-d", "501",
                 "-n", "DicomCT"], env=roots_env) == 0
    out = Path(roots_env["nnUNet_raw"]) / "Dataset501_DicomCT"
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["labels"] == {"background": 0, "liver": 1, "tumour": 2} and spec["channel_names"] == {"0": "CT"}
    assert spec["numTraining"] == 2 and len(list((out / "imagesTs").iterdir())) == 1
    cases = json.loads((out / "dicom_cases.json").read_text())
    for case, info in cases.items():
        if info["label"] is None:
            continue
        label = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(label), truth[info["series_instance_uid"]])
        assert label.GetOrigin() == image.GetOrigin() and label.GetSpacing() == image.GetSpacing()
        assert sitk.GetArrayFromImage(image).min() >= -200 - 1e-3  # rescale applied (stored values are +1024)
    assert main(["verify", "-d", str(out), "-np", "1"], env=roots_env) == 0
    assert main(["convert-dicom", "-i", str(tmp_path / "dicom"), "-d", "501", "-n", "Again"], env=roots_env) == 1


def test_nifti_labels_need_names_and_the_series_grid(tmp_path: Path, roots_env: dict[str, str],
                                                     rng: np.random.Generator, capsys: pytest.CaptureFixture) -> None:
    from nnseg.raw.dicom.files import open_dicom
    from nnseg.raw.dicom.series import read_volume, to_sitk

    files, labels = _case(tmp_path / "dicom", rng, 0)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    with open_dicom(tmp_path / "dicom") as scan:
        image = to_sitk(*read_volume(scan.series[0])[:2])
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(label, str(tmp_path / "labels" / f"{uid.replace('.', '_')}.nii.gz"))
    argv = ["convert-dicom", "-i", str(tmp_path / "dicom"), "-l", str(tmp_path / "labels"), "-d", "502", "-n", "Nii"]
    assert main(argv, env=roots_env) == 1
    assert "NIfTI labels need --labels-json" in capsys.readouterr().err
    (tmp_path / "names.json").write_text(json.dumps({"background": 0, "a": 1, "b": 2}))
    assert main([*argv, "--labels-json", str(tmp_path / "names.json")], env=roots_env) == 0
    out = Path(roots_env["nnUNet_raw"]) / "Dataset502_Nii"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "Nii_000.nii.gz"))), labels)
