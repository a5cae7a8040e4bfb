"""MSD and nnU-Net v1 conversion on tiny synthetic task folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.cli.main import main
from nnseg.raw.convert import convert_msd, convert_old_nnunet, msd_json_to_v2
from nnseg.raw.verify import ERROR, format_report, verify_dataset

SPACING_4D = (0.9, 0.8, 2.5, 1.0)
ORIGIN_4D = (10.0, -4.0, 3.0, 0.0)


def _direction_4d() -> tuple[float, ...]:
    d = np.eye(4)
    d[:3, :3] = [[0, 1, 0], [1, 0, 0], [0, 0, -1]]
    return tuple(d.ravel())


def _msd_json(n_train: int, channels: dict[str, str]) -> dict[str, object]:
    return {"name": "Tiny", "description": "synthetic", "tensorImageSize": "4D", "modality": channels,
            "labels": {"0": "background", "1": "edema", "2": "tumor"}, "numTraining": n_train, "numTest": 1,
            "training": [{"image": f"./imagesTr/t_{i}.nii.gz", "label": f"./labelsTr/t_{i}.nii.gz"}
                         for i in range(n_train)], "test": ["./imagesTs/t_9.nii.gz"]}


def _image_4d(rng: np.random.Generator) -> sitk.Image:
    array = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)  # (channels, z, y, x)
    image = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in array])
    image.SetSpacing(SPACING_4D)
    image.SetOrigin(ORIGIN_4D)
    image.SetDirection(_direction_4d())
    return image


def _label(rng: np.random.Generator) -> sitk.Image:
    seg = sitk.GetImageFromArray(rng.integers(0, 3, size=(5, 6, 7)).astype(np.uint8))
    seg.SetSpacing(SPACING_4D[:3])
    seg.SetOrigin(ORIGIN_4D[:3])
    seg.SetDirection(np.asarray(_direction_4d()).reshape(4, 4)[:3, :3].ravel().tolist())
    return seg


@pytest.fixture
def task(tmp_path: Path) -> Path:
    """Task07_Tiny: two 4D training cases, 3D labels, hidden files, no imagesTs."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "Task07_Tiny"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for i in range(2):
        sitk.WriteImage(_image_4d(rng), str(folder / f"imagesTr/t_{i}.nii.gz"), True)
        sitk.WriteImage(_label(rng), str(folder / f"labelsTr/t_{i}.nii.gz"), True)
    for hidden in ("._t_0.nii.gz", "_t_1.nii.gz"):
        (folder / "imagesTr" / hidden).write_bytes(b"macOS resource fork")
        (folder / "labelsTr" / hidden).write_bytes(b"macOS resource fork")
    (folder / "dataset.json").write_text(json.dumps(_msd_json(2, {"0": "FLAIR", "1": "T1w"})))
    return folder


def _roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    roots = tuple(tmp_path / k for k in ("raw", "preprocessed", "results"))
    for r in roots:
        r.mkdir(exist_ok=True)
    return roots  # type: ignore[return-value]


def test_4d_images_are_split_with_3d_geometry(task: Path, tmp_path: Path) -> None:
    raw, pre, res = _roots(tmp_path)
    out = convert_msd(task, raw, preprocessed_root=pre, results_root=res, num_processes=2)
    assert out == raw / "Dataset007_Tiny"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "t_0_0000.nii.gz", "t_0_0001.nii.gz", "t_1_0000.nii.gz", "t_1_0001.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["t_0.nii.gz", "t_1.nii.gz"]
    assert not (out / "imagesTs").exists() and sorted(p.name for p in raw.iterdir()) == ["Dataset007_Tiny"]
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(task / "imagesTr/t_1.nii.gz")))
    for c in range(2):
        part = sitk.ReadImage(str(out / f"imagesTr/t_1_{c:04d}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(part), source[c])
        assert part.GetDimension() == 3 and part.GetPixelIDTypeAsString() == "32-bit float"
        np.testing.assert_allclose(part.GetSpacing(), SPACING_4D[:3])
        np.testing.assert_allclose(part.GetOrigin(), ORIGIN_4D[:3])
        np.testing.assert_allclose(part.GetDirection(), np.asarray(_direction_4d()).reshape(4, 4)[:3, :3].ravel())
    assert (out / "labelsTr/t_0.nii.gz").read_bytes() == (task / "labelsTr/t_0.nii.gz").read_bytes()
    assert json.loads((out / "dataset.json").read_text()) == {
        "name": "Tiny", "description": "synthetic", "tensorImageSize": "4D",
        "labels": {"background": 0, "edema": 1, "tumor": 2}, "numTraining": 2, "numTest": 1,
        "file_ending": ".nii.gz", "channel_names": {"0": "FLAIR", "1": "T1w"}}
    problems = verify_dataset(out, num_processes=1)
    assert [p for p in problems if p.severity == ERROR] == [], format_report(problems)


def test_3d_images_and_imagests_are_copied_as_channel_0(task: Path, tmp_path: Path) -> None:
    raw, _, _ = _roots(tmp_path)
    (task / "imagesTs").mkdir()
    three_d = _label(np.random.default_rng(1))
    sitk.WriteImage(three_d, str(task / "imagesTs/t_9.nii.gz"), True)
    out = convert_msd(task, raw, num_processes=1)
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["t_9_0000.nii.gz"]
    assert (out / "imagesTs/t_9_0000.nii.gz").read_bytes() == (task / "imagesTs/t_9.nii.gz").read_bytes()


def test_id_clash_names_the_folder_and_suggests_overwrite_id(task: Path, tmp_path: Path) -> None:
    raw, pre, res = _roots(tmp_path)
    (pre / "Dataset007_Other").mkdir()
    with pytest.raises(FileExistsError, match=r"Dataset007_Other.*-overwrite_id"):
        convert_msd(task, raw, preprocessed_root=pre, results_root=res, num_processes=1)
    out = convert_msd(task, raw, preprocessed_root=pre, results_root=res, overwrite_id=123, num_processes=1)
    assert out.name == "Dataset123_Tiny"
    with pytest.raises(FileExistsError, match="Dataset123_Tiny"):
        convert_msd(task, raw, overwrite_id=123, num_processes=1)


def test_error_leaves_nothing_half_written(task: Path, tmp_path: Path) -> None:
    raw, _, _ = _roots(tmp_path)
    (task / "imagesTr/t_1.nii.gz").write_bytes(b"broken")
    with pytest.raises(RuntimeError):
        convert_msd(task, raw, num_processes=1)
    assert list(raw.iterdir()) == []


def test_bad_task_folders_are_refused(tmp_path: Path, task: Path) -> None:
    raw, _, _ = _roots(tmp_path)
    bad = tmp_path / "Hippocampus"
    bad.mkdir()
    with pytest.raises(ValueError, match="TaskXX_Name"):
        convert_msd(bad, raw)
    shutil.rmtree(task / "labelsTr")
    with pytest.raises(FileNotFoundError, match="labelsTr is missing"):
        convert_msd(task, raw)
    with pytest.raises(ValueError, match="outside 1..999"):
        convert_msd(task, raw, overwrite_id=1000)


def test_msd_json_to_v2_key_order() -> None:
    out = msd_json_to_v2(_msd_json(1, {"0": "CT"}))
    assert list(out) == ["name", "description", "tensorImageSize", "labels", "numTraining", "numTest",
                         "file_ending", "channel_names"]
    with pytest.raises(ValueError, match="MSD form"):
        msd_json_to_v2({"labels": {"background": 0}})


def _old_task(tmp_path: Path) -> Path:
    folder = tmp_path / "Task005_Prostate"
    rng = np.random.default_rng(2)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for c in range(2):
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(4, 5, 6)).astype(np.float32)),
                        str(folder / f"imagesTr/p_0_{c:04d}.nii.gz"), True)
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)),
                        str(folder / f"imagesTs/p_7_{c:04d}.nii.gz"), True)
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 3, (4, 5, 6)).astype(np.uint8)),
                    str(folder / "labelsTr/p_0.nii.gz"), True)
    (folder / "imagesTr/.DS_Store").write_bytes(b"x")
    d = _msd_json(1, {"0": "T2", "1": "ADC"})
    (folder / "dataset.json").write_text(json.dumps(d))
    return folder


def test_convert_old_nnunet(tmp_path: Path) -> None:
    raw, _, _ = _roots(tmp_path)
    old = _old_task(tmp_path)
    out = convert_old_nnunet(old, "Dataset205_Prostate", raw)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["p_0_0000.nii.gz", "p_0_0001.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["p_7_0000.nii.gz", "p_7_0001.nii.gz"]
    assert (out / "labelsTr/p_0.nii.gz").read_bytes() == (old / "labelsTr/p_0.nii.gz").read_bytes()
    d = json.loads((out / "dataset.json").read_text())
    assert d["channel_names"] == {"0": "T2", "1": "ADC"} and d["labels"]["tumor"] == 2 and "training" not in d
    assert verify_dataset(out, num_processes=1) == []
    with pytest.raises(FileExistsError, match="Dataset205_Prostate"):
        convert_old_nnunet(old, "Dataset205_Again", raw)
    with pytest.raises(ValueError, match="DatasetXXX_Name"):
        convert_old_nnunet(old, "Prostate", raw)


def test_cli_convert_msd_and_old(task: Path, tmp_path: Path, roots_env: dict[str, str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert-msd", "-i", "Task07_Tiny", "-np", "1"], env=roots_env, cwd=tmp_path) == 0
    assert (tmp_path / "raw/Dataset007_Tiny/imagesTr/t_0_0001.nii.gz").is_file()
    assert main(["convert-msd", "-i", str(task), "-np", "1"], env=roots_env, cwd=tmp_path) == 1
    assert "-overwrite_id" in capsys.readouterr().err
    assert main(["convert-msd", "-i", str(task), "-overwrite_id", "8"], env=roots_env, cwd=tmp_path) == 0
    assert (tmp_path / "raw/Dataset008_Tiny/dataset.json").is_file()
    old = _old_task(tmp_path)
    assert main(["convert-old", str(old), "Dataset205_Prostate"], env=roots_env, cwd=tmp_path) == 0
    assert (tmp_path / "raw/Dataset205_Prostate/dataset.json").is_file()
