"""One header -> plan step (:func:`nnseg.predictions.inference.memory_plan.plan_from_header`): the per-case check every
entry point runs (:func:`nnseg.predictions.run.bounded.check_case_header`) and the cluster's task size
(:func:`nnseg.cluster.memory.predict_bytes`) plan a case alike, and the header's plan is the plan of the image the
reader returns."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch
from PIL import Image
from test_bounded_predict import LABELS, _model

from nnseg.cluster.memory import predict_bytes
from nnseg.networks import build_network
from nnseg.predictions.inference.checkpoint import save_checkpoint
from nnseg.predictions.inference.memory_plan import GIB, CaseDoesNotFit, CasePlan
from nnseg.predictions.run.bounded import MemoryPolicy, check_case_header, check_case_shape
from nnseg.predictions.run.predict import Predictor
from nnseg.raw.discover import CaseFiles
from nnseg.raw.image_io import BaseImageIO, Tiff3DIO, get_io


def _sitk(path: Path, shape_zyx: tuple[int, ...], spacing: tuple[float, ...]) -> Path:
    image = sitk.GetImageFromArray(np.zeros(shape_zyx, np.int16))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _one_time_point(path: Path) -> Path:
    nibabel.save(nibabel.Nifti1Image(np.zeros((40, 36, 30, 1), np.int16), np.diag([0.9, 0.8, 2.0, 1.0])), str(path))
    return path


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(path)
    return path


IMAGES = {
    "3d.nii.gz": lambda d: _sitk(d / "3d.nii.gz", (30, 44, 38), (0.9, 1.1, 1.4)),
    "3d.nrrd": lambda d: _sitk(d / "3d.nrrd", (26, 40, 50), (0.7, 0.8, 2.5)),
    "3d.mha": lambda d: _sitk(d / "3d.mha", (20, 50, 36), (1.2, 1.0, 1.0)),
    "4d_one_time_point.nii.gz": lambda d: _one_time_point(d / "4d_one_time_point.nii.gz"),
    "2d.nii.gz": lambda d: _sitk(d / "2d.nii.gz", (64, 80), (0.8, 0.6)),
    "2d.png": lambda d: _png(d / "2d.png"),
}
MODELS = {
    "3d": dict(labels=LABELS),
    "2d": dict(labels=LABELS, two_d=True, spacing=[0.9, 1.2]),
    "3d_transposed": dict(labels=LABELS, spacing=[1.0, 1.0, 3.0], transpose=[2, 0, 1]),
}


def _fields(plan: CasePlan) -> tuple:
    return plan.mode, plan.slab_rows, plan.samples, plan.tiles, plan.estimate, plan.parts, plan.grid


def _compare(predictor: Predictor, images: list[Path], budgets: list[int], *, reader: str = "SimpleITKIO",
             read: tuple | None = None) -> set[str]:
    """For each budget and output: the cluster's size is the estimate of the per-case check's plan (the whole budget
    when the case fits no path), and the header's plan equals the plan of the image the reader returns (``read``:
    ``read_images``' answer, read beforehand)."""
    case = CaseFiles("case", tuple(images), None)
    data, geometry = read or get_io(reader).read_images(images)
    modes = set()
    for budget in budgets:
        for save in (False, True):
            worker = dataclasses.replace(predictor, max_memory_gb=budget / GIB)
            policy = MemoryPolicy(budget, "test", save_probabilities=save)
            size = predict_bytes(predictor.model, images, budget=budget, folds=len(predictor.networks), use_tta=True,
                                 tile_batch_size=predictor.tile_batch_size, save_probabilities=save, reader=reader)
            try:
                plan = check_case_header(worker, case, policy, reader=reader)
            except CaseDoesNotFit:
                assert size == budget
                with pytest.raises(CaseDoesNotFit):
                    check_case_shape(worker, case, data.shape, geometry.spacing, policy)
                modes.add("does not fit")
                continue
            assert size == plan.estimate, (budget, save)
            assert _fields(check_case_shape(worker, case, data.shape, geometry.spacing, policy)) == _fields(plan)
            modes.add(plan.mode)
    return modes


def _budgets(predictor: Predictor, images: list[Path], reader: str | None = None) -> list[int]:
    """A budget for each path: one-shot, bounded (just under the one-shot estimate) and none."""
    one_shot = predict_bytes(predictor.model, images, budget=1 << 50, folds=len(predictor.networks), use_tta=True,
                             reader=reader)
    return [1 << 50, one_shot - 1, GIB // 4]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("image_name", sorted(IMAGES))
def test_the_cluster_and_the_per_case_check_plan_a_header_alike(tmp_path: Path, expected_dir: Path, model_name: str,
                                                                 image_name: str) -> None:
    folder = _model(tmp_path / "m", expected_dir, **MODELS[model_name])
    image = IMAGES[image_name](tmp_path)
    predictor = Predictor.from_model_folder(folder, folds=(0,), device="cpu", precision="fp32")
    if model_name != "2d" and image_name.startswith("2d"):  # refused by the geometry check, before any plan
        with pytest.raises(ValueError, match="2D"):
            check_case_header(predictor, CaseFiles("case", (image,), None), MemoryPolicy(1 << 50, "test"))
        return
    for folds in (1, 3):
        several = dataclasses.replace(predictor, networks=predictor.networks * folds)
        assert {"one-shot", "bounded", "does not fit"} <= _compare(several, [image], _budgets(several, [image]))


def _tiff_case(d: Path) -> Path:
    tifffile.imwrite(str(d / "case_0000.tif"), np.zeros((30, 44, 38), np.uint8), photometric="minisblack")
    (d / "case.json").write_text(json.dumps({"spacing": [2.5, 0.9, 1.1]}))
    return d / "case_0000.tif"


def _nifti(path: Path, affine: np.ndarray) -> Path:
    nibabel.save(nibabel.Nifti1Image(np.zeros((40, 36, 30), np.int16), affine), str(path))
    return path


def _sitk_permuted(path: Path) -> Path:
    image = sitk.GetImageFromArray(np.zeros((30, 44, 38), np.int16))
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0))  # DICOMOrient("RAS") permutes the axes
    sitk.WriteImage(image, str(path))
    return path


#: reader -> (model, image): big cases in these formats used to be read whole before their memory plan
NO_READ = {
    "NibabelIO": ("3d", lambda d: _nifti(d / "case.nii.gz", np.diag([0.9, 1.1, 2.5, 1.0]))),
    "NibabelIOWithReorient": ("3d_transposed", lambda d: _nifti(
        d / "case.nii", np.array([[0, 0, -2.5, 10], [-0.9, 0, 0, 5], [0, 1.1, 0, 3], [0, 0, 0, 1.0]]))),
    "Tiff3DIO": ("3d", _tiff_case),
    "NaturalImage2DIO": ("2d", lambda d: _png(d / "case.png")),
    "SimpleITKIOWithReorient": ("3d", lambda d: _sitk_permuted(d / "case.nii.gz")),
}


@pytest.mark.parametrize("reader", sorted(NO_READ))
def test_the_per_case_check_reads_no_image_with_any_reader(tmp_path: Path, expected_dir: Path, reader: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reader's header gives the per-case check and the cluster the plan of the image the reader returns, while
    reading an image fails (a whole-body TIFF or NIfTI is not materialised before its memory plan)."""
    model_name, make = NO_READ[reader]
    folder = _model(tmp_path / "m", expected_dir, **MODELS[model_name])
    image = make(tmp_path)
    predictor = Predictor.from_model_folder(folder, folds=(0,), device="cpu", precision="fp32")
    read = get_io(reader).read_images([image])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was read")

    monkeypatch.setattr(BaseImageIO, "read_images", refuse)
    monkeypatch.setattr(Tiff3DIO, "read_images", refuse)
    assert {"one-shot", "bounded", "does not fit"} <= _compare(predictor, [image], _budgets(predictor, [image], reader),
                                                               reader=reader, read=read)


def _golden_model(root: Path, dataset: Path, configuration: str) -> Path:
    """nnU-Net's golden plans of ``dataset`` with untrained weights (the plan needs the architecture, not weights)."""
    plans = json.loads((dataset / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((dataset / "dataset.json").read_text())
    folder = root / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    cfg = plans["configurations"][configuration]
    net = build_network(cfg["architecture"], input_channels=len(dataset_json["channel_names"]),
                        num_classes=len(dataset_json["labels"]), deep_supervision=False)
    torch.manual_seed(0)
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 1,
                     "init_args": {"configuration": configuration, "fold": 0},
                     "inference_allowed_mirroring_axes": tuple(range(len(cfg["patch_size"])))},
                    folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.mark.parametrize("dataset,configuration,cases,reader", [
    ("Dataset004_Hippocampus", "3d_fullres", ["Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz"], "SimpleITKIO"),
    ("Dataset004_Hippocampus", "2d", ["Task04_Hippocampus/imagesTr/hippocampus_003.nii.gz"], "SimpleITKIO"),
    ("Dataset901_SynthAniso", "3d_fullres", ["Dataset901_SynthAniso/imagesTr/syn_000_0000.nii.gz",
                                             "Dataset901_SynthAniso/imagesTr/syn_000_0001.nii.gz"], "SimpleITKIO"),
    ("Dataset120_ISBI2012", "2d", ["ISBI2012_EM_2D/imagesTr/em_00_0000.png"], "NaturalImage2DIO"),
])
def test_real_cases_are_planned_alike(tmp_path: Path, expected_dir: Path, shared_data: Path, dataset: str,
                                      configuration: str, cases: list[str], reader: str) -> None:
    """The golden plans of the shared datasets (2 channels, anisotropic, 2D PNG) on their own images."""
    folder = _golden_model(tmp_path, expected_dir / dataset, configuration)
    predictor = Predictor.from_model_folder(folder, folds=(0,), device="cpu", precision="fp32")
    images = [shared_data / c for c in cases]
    modes = _compare(predictor, images, _budgets(predictor, images), reader=reader)
    assert {"one-shot", "does not fit"} <= modes  # bounded too where it fits under the one-shot estimate
