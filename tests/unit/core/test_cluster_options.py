"""The Dask backend's pure parts: --cluster values, memory estimates and how they are fitted to the workers, and the
error without Dask. The cluster itself is tested for real in tests/e2e/test_cluster_dask.py."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nnseg.cluster.connect import parse_cluster, require_dask
from nnseg.cluster.memory import case_header, fit_to_workers, predict_bytes, preprocess_bytes, resampling_factor
from nnseg.predictions.inference.memory_plan import GIB, case_shapes, plan_case, samples_per_call
from nnseg.predictions.inference.model_folder import load_trained_model
from nnseg.raw.image_io import BaseImageIO, Tiff3DIO


def test_parse_cluster(tmp_path: Path) -> None:
    assert parse_cluster("local") == ("local", None) and parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://127.0.0.1:8786") == ("address", "tcp://127.0.0.1:8786")
    (tmp_path / "s.json").write_text("{}")
    assert parse_cluster(str(tmp_path / "s.json")) == ("file", str(tmp_path / "s.json"))
    for bad in ("local:0", "local:x", "myhost:8786", str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match="--cluster"):
            parse_cluster(bad)


def _image(path: Path, shape: tuple[int, int, int], spacing: float) -> Path:
    img = sitk.GetImageFromArray(np.zeros(shape, np.float32))
    img.SetSpacing((spacing,) * 3)
    sitk.WriteImage(img, str(path))
    return path


def _golden_model(tmp_path: Path, expected_dir: Path) -> Path:
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir()
    golden = expected_dir / "Dataset004_Hippocampus"
    (folder / "plans.json").write_bytes((golden / "nnUNetPlans.json").read_bytes())
    (folder / "dataset.json").write_bytes((golden / "dataset.json").read_bytes())
    return folder


def test_memory_estimates_grow_with_the_case_and_fit_the_workers(tmp_path: Path, expected_dir: Path) -> None:
    small = _image(tmp_path / "small.nii.gz", (36, 50, 35), 1.0)
    big = _image(tmp_path / "big.nii.gz", (128, 128, 128), 1.0)
    assert preprocess_bytes([big]) > 8 * preprocess_bytes([small]) - 8 * 200 * 2**20
    assert preprocess_bytes([big], [(0.5, 0.5, 0.5)]) > preprocess_bytes([big])  # upsampling to a finer spacing
    assert preprocess_bytes([big, big]) > preprocess_bytes([big])  # channels
    model = load_trained_model(_golden_model(tmp_path, expected_dir))
    budget = 8 * GIB
    common = dict(budget=budget, folds=1, use_tta=False)
    assert predict_bytes(model, [big], **common) > predict_bytes(model, [small], **common)  # type: ignore[arg-type]
    assert predict_bytes(model, [big], **{**common, "folds": 5}) > predict_bytes(model, [big], **common)  # type: ignore[arg-type]
    assert resampling_factor((1, 1, 3), (1, 1, 1)) == pytest.approx(3.0)
    assert fit_to_workers(10**9, {"a": 4e9, "b": 2e9}) == 10**9
    assert fit_to_workers(10**11, {"a": 4e9, "b": 2e9}) == 4 * 10**9  # runs alone on the largest worker
    assert fit_to_workers(10**9, {"a": 4e9, "b": None}) is None  # a worker without MEMORY: no memory resource


def test_the_cluster_sizes_a_case_with_the_memory_plans_estimate(tmp_path: Path, expected_dir: Path) -> None:
    """One estimate: a task asks for what the worker's memory plan estimates (one-shot when it fits, bounded when
    not), and a case that fits no path asks for the whole budget (the worker then refuses it with the plan's words)."""
    model = load_trained_model(_golden_model(tmp_path, expected_dir))
    image = _image(tmp_path / "ct.nii.gz", (120, 160, 140), 1.0)
    shapes = case_shapes(model, (1, 120, 160, 140), (1.0, 1.0, 1.0))
    modes = set()
    for budget in (8 * GIB, int(1.3 * GIB)):
        samples = samples_per_call(model, budget)
        plan = plan_case(model, "ct", shapes, budget=budget, budget_source="", samples=samples, tiles=samples, folds=2)
        assert predict_bytes(model, [image], budget=budget, folds=2, use_tta=False) == plan.estimate
        modes.add(plan.mode)
    assert modes == {"one-shot", "bounded"}
    assert predict_bytes(model, [image], budget=GIB // 2, folds=2, use_tta=False) == GIB // 2


def test_missing_dask_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(RuntimeError, match=r"pip install nnseg\[dask\]"):
        require_dask()


def test_a_damaged_nifti_header_falls_back_to_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a nifti file")
    assert case_header((path,), reader="SimpleITKIO") is None
    assert preprocess_bytes([path]) == (len(b"not a nifti file") * 2) * 2 * 16 + 200 * 2**20


@pytest.mark.parametrize("reader", ["Tiff3DIO", "NibabelIO", "NaturalImage2DIO"])
def test_cases_of_every_reader_are_sized_from_their_headers(tmp_path: Path, reader: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A zlib TIFF stack, a NIfTI and a PNG of zeros (tiny files) count their voxels, channels and spacing as their
    reader reads them (the TIFF's spacing from its sidecar, the RGB PNG's three channels), the voxels unread."""
    if reader == "Tiff3DIO":
        path = tmp_path / "case_0000.tif"
        tifffile.imwrite(str(path), np.zeros((64, 80, 96), np.uint8), compression="zlib", photometric="minisblack")
        (tmp_path / "case.json").write_text('{"spacing": [3.0, 1.0, 1.0]}')
        images, voxels, spacing = [path, path], 64 * 80 * 96, (3.0, 1.0, 1.0)
    elif reader == "NibabelIO":
        path = tmp_path / "case.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.zeros((96, 80, 64), np.int16), np.diag([1.0, 1.0, 3.0, 1.0])), str(path))
        images, voxels, spacing = [path], 64 * 80 * 96, (3.0, 1.0, 1.0)
    else:
        path = tmp_path / "case.png"
        Image.fromarray(np.zeros((300, 200, 3), np.uint8)).save(path)
        images, voxels, spacing = [path], 300 * 200, (999.0, 1.0, 1.0)
    monkeypatch.setattr(BaseImageIO, "read_images", None)  # reading the voxels would fail
    monkeypatch.setattr(Tiff3DIO, "read_images", None)
    channels = 3 if reader == "NaturalImage2DIO" else len(images)
    target = (1.0, 1.0) if reader == "NaturalImage2DIO" else (1.0, 1.0, 1.0)
    factor = resampling_factor(spacing, target)
    assert factor == pytest.approx(1.0 if reader == "NaturalImage2DIO" else 3.0)
    expected = int(voxels * (1 + factor) * (channels + 1) * 16 + 200 * 2**20)
    assert preprocess_bytes(images, [target], reader=reader) == expected
