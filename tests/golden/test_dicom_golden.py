"""Issue 15 acceptance: nnU-Net's Hippocampus model predicts a DICOM series made from a golden case.

The SEG read back with highdicom equals the NIfTI prediction of the same volume (read by SimpleITK's own DICOM series
reader) voxel for voxel, its frames lie at the source slices' positions, and dciodvfy reports no errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import dciodvfy_errors, write_series
from golden_model import IMAGES, MODEL_ZIP, install_golden_model

from nnseg.cli.main import main

pytestmark = [pytest.mark.golden, pytest.mark.slow]


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dicom_golden")
    model = install_golden_model(root / "results")
    return {"root": root, "model": model, "case": IMAGES / "hippocampus_020.nii.gz",
            "ref": MODEL_ZIP.parent / "predictions_notta" / "hippocampus_020.nii.gz"}


def _predict(model: Path, inputs: Path, out: Path, *extra: str) -> None:
    assert main(["predict-from-modelfolder", "-i", str(inputs), "-o", str(out), "-m", str(model), "-f", "0",
                 "-device", "cpu", "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0", *extra]) == 0


def test_seg_of_a_dicom_series_equals_the_nifti_prediction(golden: dict[str, Path]) -> None:
    import highdicom as hd

    root = golden["root"]
    image = sitk.ReadImage(str(golden["case"]))
    series = root / "dicom" / "nested" / "hippo"
    # CT Image with a rescale slope of 1/8: the stored volume is exact in float32 and the reader must apply it
    write_series(sitk.GetArrayFromImage(image), series, spacing=image.GetSpacing(), origin=image.GetOrigin(),
                 direction=image.GetDirection(), modality="CT", slope=0.125, names="{:x}")
    _predict(golden["model"], root / "dicom", root / "seg", "--output-format", "dicom-seg")
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(series))
    reader.SetFileNames(files)
    volume = reader.Execute()
    (root / "nifti_in").mkdir()
    sitk.WriteImage(volume, str(root / "nifti_in" / "hippo_0000.nii.gz"))
    _predict(golden["model"], root / "nifti_in", root / "nifti_out")
    expected = sitk.ReadImage(str(root / "nifti_out" / "hippo.nii.gz"))

    segs = list((root / "seg").glob("*.dcm"))
    assert len(segs) == 1
    seg = hd.seg.segread(segs[0])
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["Anterior", "Posterior"]
    import pydicom

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                               combine_segments=True)
    truth = sitk.GetArrayFromImage(expected)
    assert labels.shape == truth.shape and np.array_equal(labels, truth) and (truth > 0).sum() > 100
    # every frame lies where the NIfTI prediction puts that slice
    by_uid = {s.SOPInstanceUID: k for k, s in enumerate(sources)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        k = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, expected.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    # and the prediction agrees with nnU-Net's own on the original (unquantised) case
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(golden["ref"])))
    for label in (1, 2):
        dice = 2 * ((labels == label) & (theirs == label)).sum() / ((labels == label).sum() + (theirs == label).sum())
        assert dice > 0.98, (label, dice)
    assert dciodvfy_errors(segs[0]) == []


def test_dicom_input_options_and_refusals(golden: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    import json

    import highdicom as hd
    import pydicom

    root = golden["root"] / "options"
    image = sitk.ReadImage(str(golden["case"]))
    array = np.round(sitk.GetArrayFromImage(image))
    files = write_series(array, root / "mr", spacing=image.GetSpacing(), origin=image.GetOrigin(),
                         direction=image.GetDirection(), modality="MR")
    name = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID).replace(".", "_")
    # DICOM in, NIfTI out (the default format): named by series, in the series geometry
    _predict(golden["model"], root / "mr", root / "nifti")
    out = sitk.ReadImage(str(root / "nifti" / f"{name}.nii.gz"))
    assert out.GetSize() == image.GetSize() and np.allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(out.GetDirection(), image.GetDirection()) and np.allclose(out.GetSpacing(), image.GetSpacing())
    # SEG with SNOMED-CT codes from a mapping file; a rerun with --c skips the finished series
    codes = root / "codes.json"
    codes.write_text(json.dumps({"Anterior": {"type": ["279136002", "SCT", "Anterior hippocampus"]}}))
    _predict(golden["model"], root / "mr", root / "seg", "--output-format", "dicom-seg", "--seg-codes", str(codes))
    seg = hd.seg.segread(root / "seg" / f"{name}.dcm")
    assert seg.get_segment_description(1).segmented_property_type.value == "279136002"
    assert seg.get_segment_description(2).segmented_property_type.value == "85756007"
    capsys.readouterr()
    _predict(golden["model"], root / "mr", root / "seg", "--output-format", "dicom-seg", "--c")
    assert "0 DICOM series" in capsys.readouterr().err
    # a broken series (one slice missing) next to a good one: refused, naming the series, before anything is written
    write_series(array, root / "broken" / "good", spacing=image.GetSpacing(), modality="MR")
    bad = write_series(array, root / "broken" / "bad", spacing=image.GetSpacing(), modality="MR")
    bad[5].unlink()
    argv = ["predict-from-modelfolder", "-i", str(root / "broken"), "-o", str(root / "none"), "-m", str(golden["model"]),
            "-f", "0", "-device", "cpu", "--output-format", "dicom-seg", "--disable_progress_bar"]
    assert main(argv) == 1
    uid = pydicom.dcmread(bad[0], stop_before_pixels=True).SeriesInstanceUID
    assert f"series {uid} misses 1 slice(s)" in capsys.readouterr().err
    assert not (root / "none").exists()
