"""MSD Task04_Hippocampus -> Dataset004_Hippocampus equals nnU-Net v2's conversion."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.raw.convert import convert_msd
from nnseg.raw.verify import format_report, verify_dataset

pytestmark = pytest.mark.golden

SAMPLE_CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_017", "hippocampus_204", "hippocampus_394")  # uint8 and float32 files


def _same_image(a: Path, b: Path) -> None:
    x, y = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert x.GetPixelIDValue() == y.GetPixelIDValue(), (a, b)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
    assert x.GetSpacing() == y.GetSpacing() and x.GetOrigin() == y.GetOrigin() and x.GetDirection() == y.GetDirection()
    rx, ry = sitk.ImageFileReader(), sitk.ImageFileReader()
    for r, p in ((rx, a), (ry, b)):
        r.SetFileName(str(p))
        r.ReadImageInformation()
    assert {k: rx.GetMetaData(k) for k in rx.GetMetaDataKeys()} == {k: ry.GetMetaData(k) for k in ry.GetMetaDataKeys()}


def test_hippocampus_conversion_matches_nnunet(shared_data: Path, expected_dir: Path, tmp_path: Path) -> None:
    task = shutil.copytree(shared_data / "Task04_Hippocampus", tmp_path / "Task04_Hippocampus")
    for r in ("raw", "preprocessed", "results"):
        (tmp_path / r).mkdir()
    out = convert_msd(task, tmp_path / "raw", preprocessed_root=tmp_path / "preprocessed",
                      results_root=tmp_path / "results", num_processes=1)
    assert out == tmp_path / "raw" / "Dataset004_Hippocampus"
    assert (out / "dataset.json").read_bytes() == (expected_dir / "Dataset004_Hippocampus/dataset.json").read_bytes()

    sources = sorted(p.name for p in (task / "imagesTr").iterdir() if not p.name.startswith((".", "_")))
    assert len(sources) == 200
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [n.replace(".nii.gz", "_0000.nii.gz") for n in sources]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sources
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["hippocampus_118_0000.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]

    for name in sources:  # 3D MSD files are copied: every byte (voxels and header) of every file is the source's
        assert (out / "imagesTr" / name.replace(".nii.gz", "_0000.nii.gz")).read_bytes() == (task / "imagesTr" / name).read_bytes()
        assert (out / "labelsTr" / name).read_bytes() == (task / "labelsTr" / name).read_bytes()
    for case in SAMPLE_CASES:
        _same_image(task / f"imagesTr/{case}.nii.gz", out / f"imagesTr/{case}_0000.nii.gz")
        _same_image(task / f"labelsTr/{case}.nii.gz", out / f"labelsTr/{case}.nii.gz")
    _same_image(task / "imagesTs/hippocampus_118.nii.gz", out / "imagesTs/hippocampus_118_0000.nii.gz")

    problems = verify_dataset(out, num_processes=2)
    assert problems == [], format_report(problems)
