"""verify_dataset: every kind of broken dataset is reported, all at once, naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.cli.main import main
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.raw.verify import ERROR, WARNING, Problem, format_report, verify_dataset


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return make_demo_dataset(tmp_path / "Dataset999_Demo", num_cases=3, shape=(8, 12, 12), num_test=0)


@pytest.fixture
def demo2(tmp_path: Path) -> Path:
    return make_demo_dataset(tmp_path / "Dataset998_Two", num_cases=3, num_channels=2, shape=(8, 12, 12), num_test=0)


def _write(array: np.ndarray, path: Path, spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
           origin: tuple[float, ...] | None = None) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path), True)


def _edit_json(folder: Path, **changes: object) -> None:
    d = json.loads((folder / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    (folder / "dataset.json").write_text(json.dumps(d))


def _errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def _one_error(problems: list[Problem], file: Path, *words: str) -> Problem:
    hits = [p for p in _errors(problems) if p.file == file and all(w in str(p) for w in words)]
    assert len(hits) == 1, format_report(problems)
    assert "Fix:" in str(hits[0]) and str(file) in str(hits[0])
    return hits[0]


def test_valid_demo_dataset_has_no_problem(demo: Path) -> None:
    assert verify_dataset(demo, num_processes=1) == []


def test_missing_required_key(demo: Path) -> None:
    _edit_json(demo, numTraining=None)
    _one_error(verify_dataset(demo, num_processes=1), demo / "dataset.json", "numTraining")


def test_num_training_differs_from_case_count(demo: Path) -> None:
    _edit_json(demo, numTraining=5)
    _one_error(verify_dataset(demo, num_processes=1), demo / "dataset.json", "numTraining is 5", "3 training cases",
               '"numTraining": 3')


def test_label_without_images_is_an_error(demo: Path) -> None:
    for p in (demo / "imagesTr").glob("case_001_*"):
        p.unlink()
    _edit_json(demo, numTraining=2)
    _one_error(verify_dataset(demo, num_processes=1), demo / "labelsTr/case_001.nii.gz",
               "images of case 'case_001' are missing", "add case_001_0000.nii.gz")


def test_missing_channel_file(demo2: Path) -> None:
    (demo2 / "imagesTr/case_001_0001.nii.gz").unlink()
    _one_error(verify_dataset(demo2, num_processes=1), demo2 / "imagesTr/case_001_0001.nii.gz", "channel file",
               "missing")


def test_missing_label_file(demo: Path) -> None:
    (demo / "labelsTr/case_002.nii.gz").unlink()
    _one_error(verify_dataset(demo, num_processes=1), demo / "labelsTr/case_002.nii.gz", "label file", "missing")


def test_corrupt_image_and_label(demo: Path) -> None:
    (demo / "imagesTr/case_000_0000.nii.gz").write_bytes(b"not an image at all")
    (demo / "labelsTr/case_001.nii.gz").write_bytes(b"\x1f\x8b garbage")
    problems = verify_dataset(demo, num_processes=1)
    _one_error(problems, demo / "imagesTr/case_000_0000.nii.gz", "unreadable")
    _one_error(problems, demo / "labelsTr/case_001.nii.gz", "unreadable")


def test_undeclared_label_value(demo: Path) -> None:
    seg = np.zeros((8, 12, 12), np.uint8)
    seg[2, 2, 2] = 7
    _write(seg, demo / "labelsTr/case_001.nii.gz")
    p = _one_error(verify_dataset(demo, num_processes=1), demo / "labelsTr/case_001.nii.gz", "[7]", "not declared")
    assert "[0, 1, 2]" in p.message


def test_non_integer_label_value(demo: Path) -> None:
    seg = np.zeros((8, 12, 12), np.float32)
    seg[0, 0, 0] = 1.5
    _write(seg, demo / "labelsTr/case_000.nii.gz")
    _one_error(verify_dataset(demo, num_processes=1), demo / "labelsTr/case_000.nii.gz", "[1.5]")


def test_nan_in_image(demo: Path) -> None:
    # SimpleITK's NIfTI reader turns NaN into 0, so only the nibabel readers can see (and report) them
    _edit_json(demo, overwrite_image_reader_writer="NibabelIO")
    image = np.ones((8, 12, 12), np.float32)
    image[1, 1, :3] = np.nan
    _write(image, demo / "imagesTr/case_002_0000.nii.gz")
    _one_error(verify_dataset(demo, num_processes=1), demo / "imagesTr/case_002_0000.nii.gz", "3 NaN")


def test_image_label_shape_mismatch(demo: Path) -> None:
    _write(np.zeros((8, 12, 11), np.uint8), demo / "labelsTr/case_000.nii.gz")
    _one_error(verify_dataset(demo, num_processes=1), demo / "labelsTr/case_000.nii.gz", "shape mismatch",
               "(8, 12, 11)", "case_000_0000.nii.gz")


def test_image_label_spacing_mismatch(demo: Path) -> None:
    _write(np.zeros((8, 12, 12), np.uint8), demo / "labelsTr/case_000.nii.gz", spacing=(1.0, 1.0, 2.5))
    _one_error(verify_dataset(demo, num_processes=1), demo / "labelsTr/case_000.nii.gz", "spacing mismatch")


def test_channel_spacing_mismatch(demo2: Path) -> None:
    _write(np.zeros((8, 12, 12), np.float32), demo2 / "imagesTr/case_000_0001.nii.gz", spacing=(0.5, 1.0, 1.0))
    _one_error(verify_dataset(demo2, num_processes=1), demo2 / "imagesTr/case_000_0001.nii.gz", "spacing mismatch")


def test_extra_channel_file_is_a_wrong_channel_count(demo: Path) -> None:
    _write(np.zeros((8, 12, 12), np.float32), demo / "imagesTr/case_001_0001.nii.gz")
    _one_error(verify_dataset(demo, num_processes=1), demo / "imagesTr/case_001_0001.nii.gz",
               "wrong number of channels")


def test_4d_file_is_a_wrong_channel_count(demo: Path) -> None:
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((8, 12, 12), np.float32))] * 2)
    sitk.WriteImage(image, str(demo / "imagesTr/case_001_0000.nii.gz"), True)
    _one_error(verify_dataset(demo, num_processes=1), demo / "imagesTr/case_001_0000.nii.gz",
               "wrong number of channels", "2 channels")


def test_origin_mismatch_is_only_a_warning(demo: Path) -> None:
    seg = sitk.ReadImage(str(demo / "labelsTr/case_000.nii.gz"))
    seg.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(seg, str(demo / "labelsTr/case_000.nii.gz"), True)
    problems = verify_dataset(demo, num_processes=1)
    assert _errors(problems) == []
    assert [(p.severity, p.file) for p in problems] == [(WARNING, demo / "labelsTr/case_000.nii.gz")]
    assert "origin mismatch" in problems[0].message


def test_misnamed_image_and_invalid_labels(demo: Path) -> None:
    (demo / "imagesTr/case_000_0000.nii.gz").rename(demo / "imagesTr/case_000.nii.gz")
    _edit_json(demo, labels={"background": 0, "organ": 1, "lesion": 3})
    problems = verify_dataset(demo, num_processes=1)
    _one_error(problems, demo / "imagesTr/case_000.nii.gz", "no 4-digit channel suffix")
    _one_error(problems, demo / "dataset.json", "not consecutive")


def test_wrong_file_ending_is_explained(demo: Path) -> None:
    _edit_json(demo, file_ending=".nrrd")
    problems = verify_dataset(demo, num_processes=1)
    _one_error(problems, demo / "dataset.json", "numTraining is 3 but 0 training cases")
    _one_error(problems, demo / "imagesTr", "'.nrrd'", "['.nii.gz']")


def test_missing_dataset_json_and_folder(tmp_path: Path) -> None:
    (tmp_path / "D").mkdir()
    _one_error(verify_dataset(tmp_path / "D"), tmp_path / "D/dataset.json", "missing")
    _one_error(verify_dataset(tmp_path / "nope"), tmp_path / "nope", "does not exist")
    (tmp_path / "D/dataset.json").write_text("{broken")
    _one_error(verify_dataset(tmp_path / "D"), tmp_path / "D/dataset.json", "not valid JSON")


def test_every_problem_is_reported_in_one_run(demo2: Path) -> None:
    """Nine independent breaks: none hides another."""
    _edit_json(demo2, numTraining=4, overwrite_image_reader_writer="NibabelIO")
    (demo2 / "imagesTr/case_000_0001.nii.gz").unlink()
    (demo2 / "labelsTr/case_001.nii.gz").write_bytes(b"junk")
    image = np.ones((8, 12, 12), np.float32)
    image[0, 0, 0] = np.nan
    _write(image, demo2 / "imagesTr/case_002_0000.nii.gz")
    _write(np.full((8, 12, 12), 9, np.uint8), demo2 / "labelsTr/case_002.nii.gz", spacing=(1.0, 1.0, 3.0))
    _write(np.zeros((8, 12, 12), np.float32), demo2 / "imagesTr/case_001_0002.nii.gz")
    _write(np.zeros((7, 12, 12), np.float32), demo2 / "imagesTr/case_002_0001.nii.gz")
    problems = verify_dataset(demo2, num_processes=1)
    expected = [
        (demo2 / "dataset.json", "numTraining is 4"),
        (demo2 / "imagesTr/case_000_0001.nii.gz", "missing"),
        (demo2 / "labelsTr/case_001.nii.gz", "unreadable"),
        (demo2 / "imagesTr/case_002_0000.nii.gz", "NaN"),
        (demo2 / "labelsTr/case_002.nii.gz", "not declared"),
        (demo2 / "labelsTr/case_002.nii.gz", "spacing mismatch"),
        (demo2 / "imagesTr/case_001_0002.nii.gz", "wrong number of channels"),
        (demo2 / "imagesTr/case_002_0001.nii.gz", "shape mismatch"),
    ]
    for file, word in expected:
        _one_error(problems, file, word)
    assert len(_errors(problems)) == len(expected), format_report(problems)
    assert "8 error(s)" in format_report(problems)


def test_explicit_dataset_key(demo: Path) -> None:
    cases = {f"c{i}": {"images": [f"imagesTr/case_00{i}_0000.nii.gz"], "label": f"labelsTr/case_00{i}.nii.gz"}
             for i in range(3)}
    cases["c2"]["images"] = ["imagesTr/gone.nii.gz"]
    _edit_json(demo, dataset=cases)
    problems = verify_dataset(demo, num_processes=1)
    _one_error(problems, demo / "imagesTr/gone.nii.gz", "missing")
    assert len(_errors(problems)) == 1


@pytest.mark.parametrize("name", ["ISBI2012_EM_2D", "Dataset901_SynthAniso"])
def test_real_datasets_verify_clean(shared_data: Path, name: str) -> None:
    problems = verify_dataset(shared_data / name, num_processes=1)
    assert _errors(problems) == [], format_report(problems)


def test_cli_verify_exit_code_and_report(tmp_path: Path, roots_env: dict[str, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_demo_dataset(tmp_path / "raw" / "Dataset997_Cli", num_cases=2, shape=(8, 8, 8), num_test=0)
    assert main(["verify", "-d", "997", "-np", "1"], env=roots_env, cwd=tmp_path) == 0
    assert "0 error(s)" in capsys.readouterr().out
    (folder / "labelsTr/case_001.nii.gz").unlink()
    assert main(["verify", "-d", "Dataset997_Cli", "-np", "1"], env=roots_env, cwd=tmp_path) == 1
    out = capsys.readouterr().out
    assert str(folder / "labelsTr/case_001.nii.gz") in out and "1 error(s)" in out
    assert main(["verify", "-d", "5"], env=roots_env, cwd=tmp_path) == 1
    assert "no dataset '5'" in capsys.readouterr().err
    assert main(["verify", "-d", "raw/Dataset997_Cli", "-np", "1"], env=roots_env, cwd=tmp_path) == 1
    assert "1 error(s)" in capsys.readouterr().out
