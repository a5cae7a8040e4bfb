"""The synthetic demo dataset: valid raw format for every option, deterministic, and easy to segment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnseg.cli.main import main
from nnseg.raw.dataset_json import load_dataset_json
from nnseg.raw.demo_data import demo_case, make_demo_dataset
from nnseg.raw.discover import training_cases
from nnseg.raw.image_io import determine_io
from nnseg.raw.verify import format_report, verify_dataset

OPTIONS = [
    {},
    {"dims": 2},
    {"num_channels": 2, "anisotropic": True},
    {"regions": True, "ignore_label": True},
    {"dims": 2, "num_channels": 2, "ignore_label": True, "lesion": False},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_variant_is_a_valid_raw_dataset(tmp_path: Path, options: dict[str, object]) -> None:
    out = make_demo_dataset(tmp_path / "Dataset990_Demo", num_cases=3, num_test=1, **options)  # type: ignore[arg-type]
    problems = verify_dataset(out, num_processes=1)
    assert problems == [], format_report(problems)
    spec = load_dataset_json(out)
    channels = int(options.get("num_channels", 1))  # type: ignore[call-overload]
    assert spec.num_channels == channels and spec.num_training == 3
    assert spec.file_ending == (".png" if options.get("dims") == 2 else ".nii.gz")
    assert len(list((out / "imagesTs").iterdir())) == channels
    cases = training_cases(out, spec)
    io = determine_io(spec.file_ending, cases[0].images[0])
    data, geometry = io.read_images(cases[0].images)
    seg, _ = io.read_seg(cases[0].label)
    if options.get("dims") == 2:
        assert io.name == "NaturalImage2DIO" and data.shape == (channels, 1, 64, 64)
    elif options.get("anisotropic"):
        assert data.shape == (2, 16, 48, 48) and geometry.spacing == pytest.approx((3.0, 0.75, 0.75))
    else:
        assert data.shape == (1, 32, 40, 40) and geometry.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert set(np.unique(seg).astype(int)) == set(spec.allowed_label_values)


def test_labels_for_regions_and_ignore(tmp_path: Path) -> None:
    spec = load_dataset_json(make_demo_dataset(tmp_path / "D", num_cases=1, regions=True, ignore_label=True))
    assert spec.labels == {"background": 0, "organ": [1, 2], "lesion": 2, "ignore": 3}
    assert spec.regions_class_order == [1, 2] and spec.foreground_labels_or_regions == [(1, 2), 2]
    spec = load_dataset_json(make_demo_dataset(tmp_path / "E", num_cases=1, lesion=False, ignore_label=True))
    assert spec.labels == {"background": 0, "organ": 1, "ignore": 2}


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", num_cases=2, dims=2)
    b = make_demo_dataset(tmp_path / "b", num_cases=2, dims=2)
    c = make_demo_dataset(tmp_path / "c", num_cases=2, dims=2, seed=1)
    name = "imagesTr/case_001_0000.png"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()


def test_organ_and_lesion_are_separable_by_intensity() -> None:
    """A fixed threshold segments the organ (Dice > 0.9): the demo is learnable in a few epochs."""
    images, seg = demo_case(np.random.default_rng(3), (32, 40, 40), num_channels=2)
    assert images.dtype == np.float32 and images.shape == (2, 32, 40, 40) and seg.dtype == np.uint8
    assert (seg == 1).sum() > 500 and (seg == 2).sum() > 20
    pred, ref = images[0] > 85, seg > 0
    assert 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) > 0.9
    assert images[1][seg == 0].mean() > images[1][seg > 0].mean() + 80  # channel 1: inverted contrast
    assert images[0][seg == 2].mean() > images[0][seg == 1].mean() + 50


@pytest.mark.parametrize("kwargs, match", [
    ({"dims": 4}, "dims=4"), ({"num_channels": 3}, "num_channels=3"), ({"dims": 2, "anisotropic": True}, "dims=3"),
    ({"regions": True, "lesion": False}, "lesion"), ({"num_cases": 0}, "num_cases=0"), ({"shape": (4, 4, 4)}, "shape"),
    ({"num_test": -1}, "num_test=-1"),
])
def test_bad_options_are_refused(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_demo_dataset(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_cli_demo_data(tmp_path: Path, roots_env: dict[str, str]) -> None:
    argv = ["demo-data", "raw/Dataset996_Cli", "--2d", "--channels", "2", "--regions", "--ignore", "--cases", "2"]
    assert main(argv, env=roots_env, cwd=tmp_path) == 0
    d = json.loads((tmp_path / "raw/Dataset996_Cli/dataset.json").read_text())
    assert d["numTraining"] == 2 and d["file_ending"] == ".png" and len(d["channel_names"]) == 2
    assert d["labels"]["ignore"] == 3 and d["regions_class_order"] == [1, 2]
    assert main(["verify", "-d", "996", "-np", "1"], env=roots_env, cwd=tmp_path) == 0


def test_cli_demo_data_shape_and_test_cases(tmp_path: Path, roots_env: dict[str, str]) -> None:
    """The size the GPU bench asks for (``--shape``) and the number of test cases, through the CLI."""
    argv = ["demo-data", "raw/Dataset995_Big", "--cases", "1", "--test-cases", "3", "--shape", "20", "24", "28"]
    assert main(argv, env=roots_env, cwd=tmp_path) == 0
    out = tmp_path / "raw/Dataset995_Big"
    assert len(list((out / "imagesTs").glob("*_0000.nii.gz"))) == 3
    image, _ = determine_io(".nii.gz").read_images([out / "imagesTr" / "case_000_0000.nii.gz"])
    assert image.shape == (1, 20, 24, 28)
    assert main(["demo-data", "raw/Dataset994_Bad", "--shape", "20", "24"], env=roots_env, cwd=tmp_path) == 1
    assert not (tmp_path / "raw/Dataset994_Bad").exists()
