"""Several ignore labels (``dataset.json``'s ``ignore_labels``): declaration checks, preprocessing merges them into
one, zero loss gradient, never scored, seeded and exactly resumable; a single ``ignore`` behaves as before."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import SHAPE, tiny_plans

from nnseg.jsonio import load_json, save_json
from nnseg.metrics.evaluate import evaluate_folder_with_dataset
from nnseg.preprocessed.class_locations import sample_class_locations
from nnseg.preprocessed.preprocess import merge_ignore_labels, preprocess_case
from nnseg.preprocessed.store import save_case
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.raw.image_io import get_io
from nnseg.raw.verify import verify_dataset
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.config import TrainConfig
from nnseg.training.data import TargetSpec, make_targets
from nnseg.training.hooks import Hooks
from nnseg.training.loop import train
from nnseg.training.losses import make_dice_ce
from nnseg.training.setup import FoldJob, make_run_spec

LABELS = {"background": 0, "organ": 1, "uncertain": 2, "artefact": 3, "ignore": 4}


def _spec(labels: dict[str, object] = LABELS, listed: object = ["uncertain", 3]) -> DatasetSpec:
    d = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz"}
    if any(isinstance(v, list) for v in labels.values()):
        d["regions_class_order"] = list(range(1, len(labels)))
    return DatasetSpec.from_json({**d, **({"ignore_labels": listed} if listed is not None else {})})


def test_declared_ignore_labels_leave_the_classes_and_one_training_ignore_label() -> None:
    spec = _spec()
    assert spec.ignore_names == ("uncertain", "artefact", "ignore") and spec.ignore_values == (2, 3, 4)
    assert spec.all_labels == [0, 1] and spec.foreground_labels_or_regions == [1] and spec.ignore_label == 2
    assert spec.allowed_label_values == [0, 1, 2, 3, 4] and spec.to_json()["ignore_labels"] == ["uncertain", 3]
    no_ignore_key = _spec({"background": 0, "organ": 1, "uncertain": 2}, ["uncertain"])
    assert no_ignore_key.ignore_values == (2,) and no_ignore_key.all_labels == [0, 1]
    single = _spec({"background": 0, "organ": 1, "ignore": 2}, None)  # nnU-Net's single ignore label: as before
    assert single.ignore_names == ("ignore",) and single.ignore_label == 2 and single.all_labels == [0, 1]
    seg = np.array([[0, 1, 2]], np.int16)
    assert merge_ignore_labels(seg, single) is seg


@pytest.mark.parametrize(("labels", "listed", "message"), [
    (LABELS, ["unknown"], r"ignore_labels names 'unknown', which is not a label of 'labels'"),
    (LABELS, ["background"], r"an ignore label must be a single int above every class"),
    ({"background": 0, "uncertain": 1, "organ": 2, "ignore": 3}, ["uncertain"],
     r"class 'organ' uses 2; ignore labels must have the highest values: renumber"),
    (LABELS, "uncertain", r"ignore_labels is 'uncertain'; it must list label names"),
    ({"background": 0, "whole": [1, 2], "core": 2, "uncertain": 3}, ["uncertain"],
     r"ignore_labels is for label datasets, but 'labels' has regions \(\['whole'\]\)"),
])
def test_bad_declarations_say_the_fix(labels: dict[str, object], listed: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(labels, listed)


def test_verify_names_the_file_and_accepts_every_declared_value(tmp_path: Path) -> None:
    raw = make_demo_dataset(tmp_path / "Dataset004_Ign", num_cases=2, shape=(8, 8, 8), num_test=0, ignore_label=True)
    d = load_json(raw / "dataset.json")  # organ 1, lesion 2, ignore 3; the label files hold 0..3
    save_json({**d, "ignore_labels": ["organ"]}, raw / "dataset.json")
    errors = [p for p in verify_dataset(raw, num_processes=1) if p.severity == "error"]
    assert errors and str(raw / "dataset.json") in str(errors[0]) and "ignore labels must have the highest" in str(errors[0])
    save_json({**d, "ignore_labels": ["lesion"]}, raw / "dataset.json")  # lesion voxels are now left out
    assert not [p for p in verify_dataset(raw, num_processes=1) if p.severity == "error"]


def test_preprocessing_writes_every_ignore_label_as_the_lowest(tiny_preprocessed: Path) -> None:
    spec = _spec()
    seg = np.zeros((1, *SHAPE), np.int16)
    seg[0, 2:6], seg[0, 6:9], seg[0, 9:12], seg[0, 12:15] = 1, 2, 3, 4
    data = np.random.default_rng(0).normal(size=(1, *SHAPE)).astype(np.float32) + 1
    plans = tiny_plans()
    _, out, props = preprocess_case(data, seg, {"spacing": [1.0, 1.0, 1.0]}, plans=plans,
                                    configuration=plans.configuration("3d_fullres"), spec=spec)
    assert out is not None and sorted(np.unique(out).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(out[0, 6:15] == 2, True)
    assert "(-1, 0, 1)" in props["class_locations"]  # patches are drawn on annotated voxels, as nnU-Net's ignore


def test_voxels_of_any_ignore_label_give_zero_loss_gradient() -> None:
    spec = _spec()
    torch.manual_seed(0)
    raw = torch.randint(0, 5, (2, 1, 6, 6, 6)).to(torch.int16)
    merged = torch.from_numpy(merge_ignore_labels(raw.numpy(), spec))
    target = make_targets(merged, TargetSpec(ignore_label=spec.ignore_label))[0]
    logits = torch.randn(2, len(spec.all_labels), 6, 6, 6, requires_grad=True)
    loss = make_dice_ce(batch_dice=False, ignore_label=spec.ignore_label)
    grad = torch.autograd.grad(loss(logits, target), logits)[0]
    ignored = (raw >= 2).expand_as(grad)
    assert grad[ignored].abs().max() == 0 and grad[~ignored].abs().max() > 1e-5


def test_ignore_label_voxels_are_never_scored(tmp_path: Path) -> None:
    io = get_io("SimpleITKIO")
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[:1], seg[1:2], seg[2:3], seg[3:] = 1, 2, 3, 4
    io.write_seg(seg, str(ref / "c0.nii.gz"), {"spacing": (1.0, 1.0, 1.0)})
    io.write_seg(np.ones_like(seg), str(pred / "c0.nii.gz"), {"spacing": (1.0, 1.0, 1.0)})  # organ everywhere
    save_json(_spec().to_json(), tmp_path / "dataset.json")
    summary = evaluate_folder_with_dataset(ref, pred, dataset_json_file=tmp_path / "dataset.json", num_processes=1)
    organ = summary["metric_per_case"][0]["metrics"][1]
    assert organ["Dice"] == 1.0 and organ["FP"] == 0 and organ["TN"] == 0 and list(summary["mean"]) == [1]
    assert not math.isnan(summary["foreground_mean"]["Dice"])


def _tiny_cases(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(5):
        seg = np.zeros((1, *SHAPE), np.int16)
        seg[0, 5:14, 5:14, 5:14] = 1
        seg[0, :, :, :3] = 2  # "uncertain" and "artefact" merged into 2 by preprocessing
        data = (seg * 1.5 + rng.normal(0, 0.6, seg.shape)).astype(np.float32)
        props = {"spacing": [1.0] * 3, "shape_before_cropping": list(SHAPE), "bbox_used_for_cropping": [[0, s] for s in SHAPE],
                 "shape_after_cropping_and_before_resampling": list(SHAPE),
                 "class_locations": sample_class_locations(seg, [1, (-1, 0, 1)])}
        save_case(folder, f"case_{i:03d}", data, seg, props, patch_size=(16, 16, 16))


class _Interrupt(Hooks):
    def on_epoch_end(self, run: object, state: object) -> None:
        if state.current_epoch == 2:  # type: ignore[attr-defined]
            raise KeyboardInterrupt


def _run(pre: Path, results: Path, *, resume: bool = False, hooks: Hooks | None = None):  # type: ignore[no-untyped-def]
    spec = DatasetSpec.from_json({**_spec().to_json(), "numTraining": 5})
    job = FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=spec, preprocessed_dataset_folder=pre,
                  results_dataset_folder=results, fold=0, trainer_name="nnUNetTrainer", device=torch.device("cpu"),
                  config=TrainConfig(num_epochs=3, iterations_per_epoch=2, val_iterations_per_epoch=1, seed=5,
                                     save_every=1), precision="fp32")
    run = make_run_spec(job, resume=resume)
    assert run.ignore_label == 2 and run.num_heads == 2
    return run, train(run, resume=resume, **({"hooks": hooks} if hooks else {}))


def test_training_with_several_ignore_labels_is_seeded_and_exactly_resumable(tmp_path: Path) -> None:
    pre = tmp_path / "preprocessed" / "Dataset990_Tiny"
    _tiny_cases(pre / "nnUNetPlans_3d_fullres")
    run_a, full = _run(pre, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(pre, tmp_path / "b", hooks=_Interrupt())
    run_b, resumed = _run(pre, tmp_path / "b", resume=True)
    assert resumed.state.current_epoch == 3
    wa = load_checkpoint(run_a.output_folder / "checkpoint_final.pth")["network_weights"]
    wb = load_checkpoint(run_b.output_folder / "checkpoint_final.pth")["network_weights"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_refuses_data_preprocessed_without_the_key(tmp_path: Path) -> None:
    from nnseg.training.preflight import check_label_values

    folder = tmp_path / "nnUNetPlans_3d_fullres"
    _tiny_cases(folder)
    seg = np.zeros((1, *SHAPE), np.int16)
    seg[0, :4] = 3  # "artefact" left as it is (nnU-Net's preprocessing does not read ignore_labels)
    save_case(folder, "case_009", np.zeros((1, *SHAPE), np.float32), seg,
              {"spacing": [1.0] * 3, "class_locations": {}}, patch_size=(16, 16, 16))
    check_label_values(folder, ["case_000"], _spec(), fix="rerun preprocessing")
    with pytest.raises(ValueError, match=r"case_009 .* holds ignore label value\(s\) \[3\] that preprocessing should "
                                         r"have written as 2 .* rerun preprocessing"):
        check_label_values(folder, ["case_009"], _spec(), fix="rerun preprocessing")
