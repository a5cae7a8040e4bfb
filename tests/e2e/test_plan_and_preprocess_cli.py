"""``nnseg plan-and-preprocess`` and friends end to end on a tiny synthetic dataset (in-process CLI calls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnseg.cli.main import main
from nnseg.jsonio import load_json, save_json
from nnseg.preprocessed.store import case_is_complete, load_case
from nnseg.raw.demo_data import make_demo_dataset

CASES = [f"case_{i:03d}" for i in range(4)]


@pytest.fixture
def demo(tmp_path: Path, roots_env: dict[str, str]) -> Path:
    return make_demo_dataset(Path(roots_env["nnUNet_raw"]) / "Dataset001_Demo", num_cases=4, shape=(16, 24, 24), num_test=0)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> int:
    return main(args, env=env, cwd=cwd)


@pytest.mark.slow
def test_plan_and_preprocess(demo: Path, tmp_path: Path, roots_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    pre = Path(roots_env["nnUNet_preprocessed"]) / "Dataset001_Demo"
    args = ["plan-and-preprocess", "-d", "1", "-c", "3d_fullres", "2d", "-np", "2", "--no_pbar", "--verify_dataset_integrity"]
    assert _cli(args, roots_env, tmp_path) == 0
    assert list(load_json(pre / "dataset_fingerprint.json")) == [
        "foreground_intensity_properties_per_channel", "median_relative_size_after_cropping", "shapes_after_crop", "spacings"]
    plans = load_json(pre / "nnUNetPlans.json")
    assert plans["dataset_name"] == "Dataset001_Demo" and plans["image_reader_writer"] == "SimpleITKIO"
    for configuration in ("3d_fullres", "2d"):
        folder = pre / plans["configurations"][configuration]["data_identifier"]
        assert all(case_is_complete(folder, c) for c in CASES)
        data, seg, props = load_case(folder, "case_003")
        assert data.shape[0] == 1 and seg.shape[1:] == data.shape[1:] and "class_locations" in props
    assert sorted(p.name for p in (pre / "gt_segmentations").iterdir()) == [f"{c}.nii.gz" for c in CASES]
    assert (pre / "dataset.json").is_file()
    # a second run reuses the fingerprint and skips the finished cases
    capsys.readouterr()
    assert _cli(args[:-1] + ["--verbose"], roots_env, tmp_path) == 0
    out = capsys.readouterr().out
    assert "using the existing fingerprint" in out and "0 cases preprocessed, 4 already done" in out


def test_steps_name_the_command_to_run_first(demo: Path, tmp_path: Path, roots_env: dict[str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["plan", "-d", "1"], roots_env, tmp_path) == 1
    assert "nnseg fingerprint -d Dataset001_Demo" in capsys.readouterr().err
    assert _cli(["preprocess", "-d", "1", "-c", "3d_fullres"], roots_env, tmp_path) == 1
    assert "nnseg plan -d Dataset001_Demo" in capsys.readouterr().err
    assert _cli(["fingerprint", "-d", "1", "-np", "1", "--no_pbar", "-fpe", "Nope"], roots_env, tmp_path) == 1
    assert "DatasetFingerprintExtractor" in capsys.readouterr().err


def test_plan_keeps_user_configurations_and_moves_plans(demo: Path, tmp_path: Path, roots_env: dict[str, str]) -> None:
    pre = Path(roots_env["nnUNet_preprocessed"])
    assert _cli(["fingerprint", "-d", "1", "-np", "1", "--no_pbar"], roots_env, tmp_path) == 0
    assert _cli(["plan", "-d", "1"], roots_env, tmp_path) == 0
    plans_file = pre / "Dataset001_Demo" / "nnUNetPlans.json"
    plans = load_json(plans_file)
    plans["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    save_json(plans, plans_file)
    assert _cli(["plan", "-d", "1"], roots_env, tmp_path) == 0
    assert load_json(plans_file)["configurations"]["3d_fullres_bs4"]["batch_size"] == 4
    make_demo_dataset(Path(roots_env["nnUNet_raw"]) / "Dataset002_Other", num_cases=2, shape=(8, 8, 8), num_test=0)
    assert _cli(["move-plans", "-s", "1", "-t", "2", "-sp", "nnUNetPlans", "-tp", "nnUNetMovedPlans"], roots_env, tmp_path) == 0
    moved = load_json(pre / "Dataset002_Other" / "nnUNetMovedPlans.json")
    assert moved["dataset_name"] == "Dataset002_Other" and moved["plans_name"] == "nnUNetMovedPlans"
    assert moved["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetMovedPlans_3d_fullres"
    assert moved["configurations"]["3d_fullres"]["patch_size"] == plans["configurations"]["3d_fullres"]["patch_size"]


def test_preprocess_error_from_a_worker_names_the_file(demo: Path, tmp_path: Path, roots_env: dict[str, str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["plan-and-preprocess", "-d", "1", "--no_pp", "-npfp", "1", "--no_pbar"], roots_env, tmp_path) == 0
    bad = demo / "imagesTr" / "case_002_0000.nii.gz"
    bad.write_bytes(b"broken")
    assert _cli(["preprocess", "-d", "1", "-c", "3d_fullres", "3d_lowres", "-np", "2", "--no_pbar"], roots_env, tmp_path) == 1
    captured = capsys.readouterr()
    assert "nnUNetPlans.json has no 3d_lowres (the planner did not need it" in captured.out
    assert str(bad) in captured.err
    folder = Path(roots_env["nnUNet_preprocessed"]) / "Dataset001_Demo" / "nnUNetPlans_3d_fullres"
    assert not any(p.name.startswith(("case_002", ".")) for p in folder.iterdir())


def test_configuration_in_no_plans_is_an_error_but_an_unneeded_one_is_skipped(
        demo: Path, tmp_path: Path, roots_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23.3: a typo (`-c 3d_fulres`) printed "skipping it" and exited 0 having done nothing."""
    args = ["plan-and-preprocess", "-d", "1", "-npfp", "1", "-np", "1", "--no_pbar", "-c"]
    assert _cli(args + ["3d_fulres"], roots_env, tmp_path) == 1
    err = capsys.readouterr().err
    assert "configuration 3d_fulres is not in" in err and "which has 2d 3d_fullres" in err, err
    assert "did you mean 3d_fullres?" in err and "choose from these with -c" in err and "Traceback" not in err
    pre = Path(roots_env["nnUNet_preprocessed"]) / "Dataset001_Demo"
    assert not (pre / "nnUNetPlans_3d_fullres").exists() and not (pre / "nnUNetPlans_2d").exists()
    # nnU-Net's default -c names 3d_lowres, which the planner leaves out for small images: skipped, not an error
    assert _cli(args + ["2d", "3d_lowres"], roots_env, tmp_path) == 0
    assert "nnUNetPlans.json has no 3d_lowres (the planner did not need it" in capsys.readouterr().out
    # a dataset of 2D images has no 3D configurations at all: the default -c still works
    make_demo_dataset(Path(roots_env["nnUNet_raw"]) / "Dataset003_Flat", num_cases=3, dims=2, shape=(24, 24), num_test=0)
    assert _cli(["plan-and-preprocess", "-d", "3", "-npfp", "1", "-np", "1", "--no_pbar"], roots_env, tmp_path) == 0
    out = capsys.readouterr().out
    assert "has no 3d_fullres" in out and "has no 3d_lowres" in out
    assert case_is_complete(Path(roots_env["nnUNet_preprocessed"]) / "Dataset003_Flat" / "nnUNetPlans_2d", "case_000")


def test_bad_arguments_give_clear_errors(demo: Path, tmp_path: Path, roots_env: dict[str, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["plan-and-preprocess", "-d", "1", "-c", "2d", "3d_fullres", "-np", "1", "2", "3"], roots_env, tmp_path) == 1
    assert "one per configuration" in capsys.readouterr().err
    assert _cli(["plan-and-preprocess", "-d", "1", "--no_pp", "-npfp", "1", "--no_pbar", "-pl", "NoSuchPlanner"],
                roots_env, tmp_path) == 1
    assert "NoSuchPlanner" in capsys.readouterr().err
    fingerprint = Path(roots_env["nnUNet_preprocessed"]) / "Dataset001_Demo" / "dataset_fingerprint.json"
    assert not fingerprint.exists()  # the unknown planner is refused before fingerprinting
    assert _cli(["fingerprint", "-d", "1", "-np", "1", "--no_pbar"], roots_env, tmp_path) == 0
    assert _cli(["plan", "-d", "1", "-overwrite_target_spacing", "1", "2"], roots_env, tmp_path) == 1
    assert "3 values" in capsys.readouterr().err
    make_demo_dataset(Path(roots_env["nnUNet_raw"]) / "Dataset002_Two", num_cases=2, num_channels=2, shape=(8, 8, 8),
                      num_test=0)
    assert _cli(["plan", "-d", "1"], roots_env, tmp_path) == 0
    assert _cli(["move-plans", "-s", "1", "-t", "2", "-sp", "nnUNetPlans"], roots_env, tmp_path) == 1
    assert "nnUNetv2_extract_fingerprint -d Dataset002_Two" in capsys.readouterr().err  # across channels: its fingerprint
    assert _cli(["plan", "-d", "7"], roots_env, tmp_path) == 1
    assert "Dataset001_Demo" in capsys.readouterr().err  # the datasets that exist are listed
