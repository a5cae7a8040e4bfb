"""Issue 12, data side: bad raw data stops fingerprinting/preprocessing at once, naming the file and the fix,
without --verify_dataset_integrity (items 1 and 7); an output write failure is not blamed on a good case (item 6)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.cli.main import main
from nnseg.jsonio import load_json, save_json
from nnseg.preprocessed import store
from nnseg.raw.demo_data import make_demo_dataset

DS = "Dataset001_Demo"


@pytest.fixture
def demo(roots_env: dict[str, str]) -> Path:
    return make_demo_dataset(Path(roots_env["nnUNet_raw"]) / DS, num_cases=3, shape=(8, 12, 12), num_test=0)


def _rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    image = sitk.ReadImage(str(path))
    array = change(sitk.GetArrayFromImage(image).astype(np.float32))
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(image.GetSpacing())
    sitk.WriteImage(out, str(path))


def _set_nan(a: np.ndarray) -> np.ndarray:
    a[1, 2, 3] = np.nan
    return a


def _set_inf(a: np.ndarray) -> np.ndarray:
    a[0, 0, 0] = np.inf
    return a


def _use_nibabel(raw: Path) -> None:  # SimpleITK turns NaN into 0 when reading NIfTI; nibabel keeps it
    d = load_json(raw / "dataset.json")
    d["overwrite_image_reader_writer"] = "NibabelIO"
    save_json(d, raw / "dataset.json")


def _refused(args: list[str], env: dict[str, str], cwd: Path, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    assert main(args, env=env, cwd=cwd) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def _plan_and_preprocess(np_: str = "1") -> list[str]:
    return ["plan-and-preprocess", "-d", "1", "-c", "3d_fullres", "-np", np_, "-npfp", np_, "--no_pbar"]


def _nothing_written(env: dict[str, str]) -> None:
    pre = Path(env["nnUNet_preprocessed"]) / DS
    assert not (pre / "dataset_fingerprint.json").exists() and not (pre / "nnUNetPlans.json").exists()


@pytest.mark.parametrize("change, what", [(_set_nan, "1 NaN value(s)"), (_set_inf, "1 infinite value(s)")])
def test_non_finite_voxels_stop_fingerprinting(demo: Path, roots_env: dict[str, str], tmp_path: Path, capsys, change,
                                               what: str) -> None:
    _use_nibabel(demo)
    bad = demo / "imagesTr" / "case_001_0000.nii.gz"
    _rewrite(bad, change)
    _refused(_plan_and_preprocess("2"), roots_env, tmp_path, capsys, str(bad), what, "replace them", "nnseg verify")
    _nothing_written(roots_env)


def test_non_finite_voxels_stop_preprocessing_with_existing_plans(demo: Path, roots_env: dict[str, str],
                                                                  tmp_path: Path, capsys) -> None:
    _use_nibabel(demo)
    assert main(_plan_and_preprocess() + ["--no_pp"], env=roots_env, cwd=tmp_path) == 0
    bad = demo / "imagesTr" / "case_002_0000.nii.gz"
    _rewrite(bad, _set_nan)  # changed after planning: preprocessing must refuse it too
    _refused(["preprocess", "-d", "1", "-c", "3d_fullres", "-np", "1", "--no_pbar"], roots_env, tmp_path, capsys,
             str(bad), "NaN", "replace them")
    folder = Path(roots_env["nnUNet_preprocessed"]) / DS / "nnUNetPlans_3d_fullres"
    assert not any(p.name.startswith(("case_002", ".")) for p in folder.iterdir())


def test_missing_channel_file_is_named(roots_env: dict[str, str], tmp_path: Path, capsys) -> None:
    raw = make_demo_dataset(Path(roots_env["nnUNet_raw"]) / DS, num_cases=3, num_channels=2, shape=(8, 12, 12),
                            num_test=0)
    missing = raw / "imagesTr" / "case_001_0001.nii.gz"
    missing.unlink()
    _refused(_plan_and_preprocess("2"), roots_env, tmp_path, capsys, str(missing), "missing", "declares 2 channel(s)",
             "add the file")
    _nothing_written(roots_env)


def test_case_whose_images_are_missing_is_refused_not_dropped(demo: Path, roots_env: dict[str, str],
                                                               tmp_path: Path, capsys) -> None:
    """Issue 23.2: the label exists, the images do not: the case was left out silently (exit 0, 2 of 3 cases)."""
    (demo / "imagesTr" / "case_001_0000.nii.gz").unlink()
    err = _refused(_plan_and_preprocess(), roots_env, tmp_path, capsys, str(demo / "labelsTr" / "case_001.nii.gz"),
                   "the images of case 'case_001' are missing", "add case_001_0000.nii.gz", "or remove the label")
    assert "numTraining is 3 but 2 training cases were found" in err
    _nothing_written(roots_env)
    assert not (Path(roots_env["nnUNet_preprocessed"]) / DS).exists()  # refused before anything is written


@pytest.mark.parametrize("num_training", [2, 4])
def test_num_training_other_than_the_cases_found_is_refused(demo: Path, roots_env: dict[str, str], tmp_path: Path,
                                                           capsys, num_training: int) -> None:
    d = load_json(demo / "dataset.json")
    d["numTraining"] = num_training
    save_json(d, demo / "dataset.json")
    _refused(_plan_and_preprocess(), roots_env, tmp_path, capsys, str(demo / "dataset.json"),
             f"numTraining is {num_training} but 3 training cases were found", '"numTraining": 3')
    _nothing_written(roots_env)
    # preprocessing with existing plans runs the same checks
    d["numTraining"] = 3
    save_json(d, demo / "dataset.json")
    assert main(_plan_and_preprocess() + ["--no_pp"], env=roots_env, cwd=tmp_path) == 0
    (demo / "imagesTr" / "case_002_0000.nii.gz").unlink()
    _refused(["preprocess", "-d", "1", "-c", "3d_fullres", "-np", "1", "--no_pbar"], roots_env, tmp_path, capsys,
             "the images of case 'case_002' are missing")
    assert not (Path(roots_env["nnUNet_preprocessed"]) / DS / "nnUNetPlans_3d_fullres").exists()


def test_4d_image_is_refused_as_a_wrong_channel_count(demo: Path, roots_env: dict[str, str], tmp_path: Path,
                                                      capsys) -> None:
    bad = demo / "imagesTr" / "case_000_0000.nii.gz"
    image = sitk.ReadImage(str(bad))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(bad))
    _refused(_plan_and_preprocess(), roots_env, tmp_path, capsys, str(bad), "2 channel(s)", "declares 1",
             "split a 4D file")
    _nothing_written(roots_env)


def test_undeclared_label_value_is_refused(demo: Path, roots_env: dict[str, str], tmp_path: Path, capsys) -> None:
    bad = demo / "labelsTr" / "case_002.nii.gz"

    def add_seven(a: np.ndarray) -> np.ndarray:
        a[0, 0, 0] = 7
        return a.astype(np.uint8)

    _rewrite(bad, add_seven)
    _refused(_plan_and_preprocess(), roots_env, tmp_path, capsys, str(bad), "label values [7]", "declared: [0, 1, 2]",
             "declare them in dataset.json")
    _nothing_written(roots_env)


def test_2d_case_in_a_dataset_planned_from_volumes(demo: Path, roots_env: dict[str, str], tmp_path: Path,
                                                   capsys) -> None:
    assert main(_plan_and_preprocess() + ["--no_pp"], env=roots_env, cwd=tmp_path) == 0
    image, label = demo / "imagesTr" / "case_001_0000.nii.gz", demo / "labelsTr" / "case_001.nii.gz"
    for path in (image, label):  # the case becomes one slice: a 2D image in a 3D dataset
        flat = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[4:5]
        sitk.WriteImage(sitk.GetImageFromArray(flat), str(path))
    _refused(["preprocess", "-d", "1", "-c", "3d_fullres", "-np", "1", "--no_pbar"], roots_env, tmp_path, capsys,
             str(image), "a 2D image (one slice)", "plans were made from volumes", "remove the case")


def test_verify_still_reports_everything(demo: Path, roots_env: dict[str, str], tmp_path: Path, capsys) -> None:
    _use_nibabel(demo)
    _rewrite(demo / "imagesTr" / "case_000_0000.nii.gz", _set_inf)
    _rewrite(demo / "labelsTr" / "case_001.nii.gz", lambda a: np.where(a > 0, 9, 0).astype(np.uint8))
    assert main(["plan-and-preprocess", "-d", "1", "--no_pp", "-npfp", "1", "--no_pbar", "--verify_dataset_integrity"],
                env=roots_env, cwd=tmp_path) == 1
    out = capsys.readouterr()
    report = out.out + out.err
    assert "case_000_0000.nii.gz: image contains 1 infinite value(s)" in report
    assert "case_001.nii.gz: label values [9]" in report and "2 error(s)" in report


def test_disk_full_while_preprocessing_blames_the_output_not_the_case(demo: Path, roots_env: dict[str, str],
                                                                      tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(_plan_and_preprocess() + ["--no_pp"], env=roots_env, cwd=tmp_path) == 0
    real = store._write_b2nd_to
    calls = []

    def full_disk(array, path, **kw):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) > 2:  # the first case is written, then the disk is full
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(array, path, **kw)

    monkeypatch.setattr(store, "_write_b2nd_to", full_disk)
    folder = Path(roots_env["nnUNet_preprocessed"]) / DS / "nnUNetPlans_3d_fullres"
    err = _refused(["preprocess", "-d", "1", "-c", "3d_fullres", "-np", "1", "--no_pbar"], roots_env, tmp_path, capsys,
                   str(folder), "No space left on device [ENOSPC]", "the disk is full", "rerun")
    assert "fix or remove this case" not in err
    assert sorted(p.name for p in folder.iterdir()) == ["case_000.b2nd", "case_000.json", "case_000_seg.b2nd",
                                                        "nnseg_preprocessing.json"]  # no temp files, no half case


def test_output_under_a_file_names_the_path(demo: Path, roots_env: dict[str, str], tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    env = dict(roots_env, nnUNet_preprocessed=str(blocker / "preprocessed"))
    _refused(["fingerprint", "-d", "1", "-np", "1", "--no_pbar"], env, tmp_path, capsys, str(blocker),
             "[ENOTDIR]", "a part of the path is a file")
