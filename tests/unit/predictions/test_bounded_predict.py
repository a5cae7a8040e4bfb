"""The bounded-memory path (streamed sliding window + slab export) against the one-shot path on small cases.

Every case is forced through several slabs (2 output rows each); labels must be identical and probabilities
(softmax / sigmoid, uncropped, in file order, read back from the streamed .npz) within 1e-6 of the one-shot path.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny_golden_plans import tiny_3d_configuration

from nnseg._types import Geometry
from nnseg.networks import build_network
from nnseg.predictions.run.bounded import predict_case_bounded
from nnseg.predictions.inference.checkpoint import save_checkpoint
from nnseg.predictions.export.from_logits import convert_logits
from nnseg.predictions.inference.memory_plan import CaseDoesNotFit
from nnseg.predictions.run.predict import Predictor, predict

LABELS = {"background": 0, "a": 1, "b": 2}
REGIONS = {"background": 0, "whole": [1, 2], "core": 2}


def _model(root: Path, expected_dir: Path, *, labels: dict, two_d: bool = False, spacing: list | None = None,
           transpose: list | None = None, patch: list | None = None, regions_order: list | None = None) -> Path:
    golden = expected_dir / "Dataset004_Hippocampus"
    plans = json.loads((golden / "nnUNetPlans.json").read_text())
    if two_d:
        cfg = copy.deepcopy(plans["configurations"]["2d"])
        cfg.update(patch_size=[16, 16], spacing=spacing or [1.0, 1.0])
        cfg["architecture"]["arch_kwargs"].update(n_stages=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3]] * 2,
                                                  strides=[[1, 1], [2, 2]], n_conv_per_stage=[1, 1],
                                                  n_conv_per_stage_decoder=[1])
    else:
        cfg = tiny_3d_configuration(plans)
        cfg.update(spacing=spacing or [1.0, 1.0, 1.0], patch_size=patch or [16, 16, 16])
    name = "2d_tiny" if two_d else "3d_tiny"
    plans["configurations"] = {name: cfg}
    if transpose:
        plans["transpose_forward"] = transpose
        plans["transpose_backward"] = [int(i) for i in np.argsort(transpose)]
    dataset = json.loads((golden / "dataset.json").read_text())
    dataset["labels"] = labels
    if regions_order:
        dataset["regions_class_order"] = regions_order
    folder = root / f"nnUNetTrainer__nnUNetPlans__{name}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    num_outputs = len(regions_order) if regions_order else len([v for k, v in labels.items() if k != "ignore"])
    torch.manual_seed(3)
    net = build_network(cfg["architecture"], input_channels=1, num_classes=num_outputs, deep_supervision=False)
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                     "init_args": {"configuration": name, "fold": 0}, "current_epoch": 1,
                     "inference_allowed_mirroring_axes": (0, 1) if two_d else (0, 1, 2)},
                    folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _image(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[np.ndarray, Geometry]:
    rng = np.random.default_rng(1)
    image = rng.normal(100, 30, size=(1, *shape)).astype(np.float32)
    image[:, :2] = 0  # a zero border: cropping (bbox) is exercised
    image[:, :, :, -1] = 0
    return image, Geometry(spacing=spacing, reader="SimpleITKIO", origin=(0.0, 0.0, 0.0),
                           direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), sitk_spacing=tuple(spacing[::-1]))


def _compare(folder: Path, image: np.ndarray, geometry: Geometry, out: Path) -> int:
    predictor = Predictor.from_model_folder(folder, folds=(0,), device="cpu", precision="fp32", tile_batch_size=2)
    data, props = predictor.preprocess(image, geometry)
    model = predictor.model
    seg_ref, probs_ref = convert_logits(predictor.predict_logits(data), props, plans=model.plans,
                                        configuration=model.configuration, spec=model.spec, return_probabilities=True)
    assert probs_ref is not None and len(np.unique(seg_ref)) > 1
    slabs = []
    for save in (False, True):
        target = out / f"p{int(save)}"
        predict_case_bounded(predictor, data, props, target / "case", slab_rows=2, save_probabilities=save,
                             geometry=geometry, on_progress=lambda stage, n: slabs.append(stage))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "case.nii.gz")))
        np.testing.assert_array_equal(seg, seg_ref)
    probs = np.load(out / "p1" / "case.npz")["probabilities"]
    assert probs.shape == probs_ref.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, probs_ref, atol=1e-6, rtol=0)
    assert pickle.loads((out / "p1" / "case.pkl").read_bytes())["shape_before_cropping"] == tuple(props["shape_before_cropping"])
    return slabs.count("export")


def test_plain_labels_with_ignore_label(tmp_path: Path, expected_dir: Path) -> None:
    folder = _model(tmp_path, expected_dir, labels={**LABELS, "ignore": 3})
    image, geometry = _image((13, 21, 18), (1.3, 0.9, 1.1))
    assert _compare(folder, image, geometry, tmp_path) >= 2 * 5


def test_regions(tmp_path: Path, expected_dir: Path) -> None:
    folder = _model(tmp_path, expected_dir, labels=REGIONS, regions_order=[1, 2])
    image, geometry = _image((12, 17, 19), (1.2, 0.8, 1.0))
    assert _compare(folder, image, geometry, tmp_path) >= 2 * 5


@pytest.mark.parametrize("spacing,transpose", [([3.0, 1.0, 1.0], None), ([1.0, 1.0, 3.0], [2, 0, 1])])
def test_anisotropic_separate_z(tmp_path: Path, expected_dir: Path, spacing: list, transpose: list | None) -> None:
    """Separate-z export: low-resolution axis first (the streaming axis) or last, with a transposing plans file."""
    folder = _model(tmp_path, expected_dir, labels=LABELS, spacing=spacing, transpose=transpose)
    image, geometry = _image((14, 19, 17), (2.5, 0.8, 0.9) if transpose is None else (0.8, 0.9, 2.5))
    assert _compare(folder, image, geometry, tmp_path) >= 2 * 4


def test_2d_model_on_a_volume(tmp_path: Path, expected_dir: Path) -> None:
    folder = _model(tmp_path, expected_dir, labels=LABELS, two_d=True, spacing=[0.9, 1.2])
    image, geometry = _image((6, 21, 18), (2.0, 0.8, 1.1))
    assert _compare(folder, image, geometry, tmp_path) >= 2 * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bounded_on_cuda_matches_the_cpu(tmp_path: Path, expected_dir: Path) -> None:
    """Ring accumulator and slab export on the GPU (fp32) give the CPU's result up to GPU rounding."""
    folder = _model(tmp_path, expected_dir, labels=LABELS)
    image, geometry = _image((13, 21, 18), (1.3, 0.9, 1.1))
    cpu = Predictor.from_model_folder(folder, folds=(0,), device="cpu", precision="fp32")
    gpu = Predictor.from_model_folder(folder, folds=(0,), device="cuda", precision="fp32")
    data, props = cpu.preprocess(image, geometry)
    for name, predictor in (("cpu", cpu), ("gpu", gpu)):
        predict_case_bounded(predictor, data, props, tmp_path / name / "case", slab_rows=2, save_probabilities=True,
                             geometry=geometry)
    seg = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n / "case.nii.gz"))) for n in ("cpu", "gpu")]
    assert (seg[0] == seg[1]).mean() > 0.999
    probs = [np.load(tmp_path / n / "case.npz")["probabilities"] for n in ("cpu", "gpu")]
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-4)
