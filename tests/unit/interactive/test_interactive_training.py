"""The interactive trainer: simulated prompts, corrections, the robot user, and training runs that write an
nnInteractive model folder (tiny synthetic data, CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interactive_model import CONFIGURATION, small_plans, write_training_dataset
from nnseg.interactive import InteractiveSession, load_interactive_model
from nnseg.interactive.robot import largest_error, region_centre, run_robot
from nnseg.interactive.training import CHECKPOINT_TRAINER, INFERENCE_INFO, TRAINER_NAME
from nnseg.interactive.training.episodes import correction, initial_prompt
from nnseg.interactive.training.simulate import box_mask, lasso_mask, perturbed_mask, scribble_mask
from nnseg.interactive.training.task import choose_object, layout
from nnseg.launch.request import TrainRequest, fold_job, resolve_trainer
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.hooks import Hooks
from nnseg.training.loop import train
from nnseg.training.setup import make_run_spec

SHAPE = (24, 28, 20)


def _ellipsoid(centre=(12, 14, 10), radii=(6, 8, 5)) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def _one_slice(mask: np.ndarray) -> bool:
    return any(len(np.unique(np.nonzero(mask)[axis])) == 1 for axis in range(3))


def test_simulated_prompts_follow_the_object() -> None:
    obj, rng = _ellipsoid(), np.random.default_rng(0)
    lo, hi = [i.min() for i in np.nonzero(obj)], [i.max() + 1 for i in np.nonzero(obj)]
    for _ in range(20):
        box = box_mask(obj, rng, flat=False)
        box_lo, box_hi = [i.min() for i in np.nonzero(box)], [i.max() + 1 for i in np.nonzero(box)]
        assert box[obj].all() and all(0 <= a - b <= 2 for a, b in zip(lo, box_lo)) and \
            all(0 <= b - a <= 2 for a, b in zip(hi, box_hi))
        flat = box_mask(obj, rng, flat=True)
        assert _one_slice(flat) and (flat & obj).any()
        scribble = scribble_mask(obj, rng)
        assert scribble.any() and _one_slice(scribble) and not (scribble & ~obj).any()
        assert _one_slice(lasso_mask(obj, rng))
        assert (perturbed_mask(obj, rng) != obj).any()


def test_lasso_encloses_the_cross_section() -> None:
    obj, rng = _ellipsoid(), np.random.default_rng(1)
    for _ in range(10):
        lasso = lasso_mask(obj, rng)
        axis = next(a for a in range(3) if len(np.unique(np.nonzero(lasso)[a])) == 1)
        index = int(np.nonzero(lasso)[axis][0])
        section = np.take(obj, index, axis=axis)
        assert not (section & ~np.take(lasso, index, axis=axis)).any()


def test_initial_prompts_of_every_kind_mark_the_object() -> None:
    obj, lay, rng = _ellipsoid(), layout(), np.random.default_rng(0)
    seen = set()
    for _ in range(80):
        channels = np.zeros((lay.num_channels, *SHAPE), np.float32)
        kind = initial_prompt(channels, obj, np.ones(SHAPE, bool), lay, rng)
        seen.add(kind)
        if kind == "initial_mask":
            assert channels[lay.prev_seg].any() and not channels[1:].any()
            continue
        positive = channels[lay.pairs[kind][0]]
        assert positive.max() in (np.float32(1.0), np.float32(lay.decay)) and (positive[obj] > 0).any()  # 0.98: a negative click came after
        assert not channels[lay.prev_seg].any()
    assert seen == {"points", "bbox2d", "bbox3d", "scribble", "lasso", "initial_mask"}
    empty = np.zeros((lay.num_channels, *SHAPE), np.float32)
    assert initial_prompt(empty, np.zeros(SHAPE, bool), np.ones(SHAPE, bool), lay, rng) == "none" and not empty.any()


def test_correction_prompts_the_largest_error_and_ages_older_prompts() -> None:
    lay, target = layout(), _ellipsoid()
    missed = target & (np.indices(SHAPE)[0] >= 12)  # the prediction misses half the object
    prediction = target & ~missed
    channels = np.zeros((lay.num_channels, *SHAPE), np.float32)
    channels[lay.pairs["bbox3d"][0]][target] = 1
    for seed in range(10):
        out = channels.copy()
        assert correction(out, target, prediction, np.ones(SHAPE, bool), lay, np.random.default_rng(seed))
        assert (out[lay.prev_seg] == prediction).all()
        assert out[lay.pairs["bbox3d"][0]].max() == pytest.approx(lay.decay)
        new = [c for c in (lay.pairs["points"][0], lay.pairs["scribble"][0]) if out[c].max() == 1]
        assert len(new) == 1 and (out[new[0]] > 0)[missed].any()
        assert not out[lay.pairs["points"][1]].any() and not out[lay.pairs["scribble"][1]].any()
    extra = _ellipsoid((12, 14, 10), (9, 11, 7))  # too much: a negative prompt outside the object
    out = channels.copy()
    correction(out, target, extra, np.ones(SHAPE, bool), lay, np.random.default_rng(0))
    negative = out[lay.pairs["points"][1]] + out[lay.pairs["scribble"][1]]
    assert (negative > 0).any() and not (negative > 0)[target & (out[lay.pairs["scribble"][1]] > 0)].any()
    assert not correction(channels.copy(), target, target, np.ones(SHAPE, bool), lay, np.random.default_rng(0))


def test_objects_are_labels_or_connected_components() -> None:
    seg = np.zeros(SHAPE, np.int16)
    seg[2:6, 2:6, 2:6] = 2
    seg[14:20, 14:20, 10:16] = 2
    seg[8:12, 20:26, 2:8] = 1
    sizes = set()
    for seed in range(40):
        obj = choose_object(seg, [(1,), (2,)], np.random.default_rng(seed))
        sizes.add(int(obj.sum()))
        assert len(np.unique(seg[obj])) == 1 and seg[obj][0] > 0
    assert sizes == {4 ** 3 + 6 ** 3, 6 ** 3, 4 ** 3, 4 * 6 * 6}  # label 2, each of its pieces, label 1
    assert not choose_object(seg, [(3,)], np.random.default_rng(0)).any()


def test_robot_clicks_the_centre_of_the_largest_error() -> None:
    target = np.zeros(SHAPE, bool)
    target[2:12, 2:12, 2:12] = True
    prediction = target.copy()
    prediction[2:12, 2:12, 2:5] = False  # missed: 10 x 10 x 3
    prediction[18:22, 18:22, 14:18] = True  # extra: 4 x 4 x 4
    point, positive = largest_error(prediction, target)
    assert positive and point[2] == 3 and 3 <= point[0] <= 10 and 3 <= point[1] <= 10  # the slab's middle slice
    prediction[2:12, 2:12, 2:5] = True
    assert largest_error(prediction, target) == ((19, 19, 15), False)  # first of the 4-cube's central voxels
    assert largest_error(target, target) is None
    assert region_centre(target) == (6, 6, 6)


def _request(pre: Path, results: Path, *extra: str) -> TrainRequest:
    name, config = resolve_trainer(TRAINER_NAME, overrides=["num_epochs=2", "iterations_per_epoch=3",
                                                            "val_iterations_per_epoch=1", "batch_size=2", "seed=3",
                                                            "save_every=1", "interactive_correction_prob=1.0", *extra])
    return TrainRequest(pre, results, CONFIGURATION, 0, trainer_name=name, config=config.replace(precision="fp32"),
                        device="cpu")


@pytest.fixture
def interactive_data(tmp_path: Path) -> Path:
    pre = write_training_dataset(tmp_path / "preprocessed" / "Dataset991_Tiny", plans=small_plans(),
                                 configuration=CONFIGURATION)
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001", "case_002"],
                                                        "val": ["case_003"]}]))
    return pre


def test_trainer_writes_an_nninteractive_model_folder(interactive_data: Path, tmp_path: Path) -> None:
    from nnseg.launch.train import run_training

    outcome = run_training(_request(interactive_data, tmp_path / "results"))
    model = outcome.output_folder.parent
    assert model.name == f"{TRAINER_NAME}__nnUNetPlans__{CONFIGURATION}"
    assert json.loads((model / "inference_info.json").read_text()) == INFERENCE_INFO
    assert {p.name for p in model.iterdir()} >= {"plans.json", "dataset.json", "inference_info.json", "fold_0"}
    ckpt = load_checkpoint(outcome.output_folder / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == CHECKPOINT_TRAINER and ckpt["init_args"]["configuration"] == CONFIGURATION
    summary = json.loads((outcome.validation_folder / "summary.json").read_text())
    assert len(summary["mean_dice_after_interaction"]) == 5 and set(summary["cases"]) == {"case_003"}
    assert outcome.foreground_dice == pytest.approx(summary["mean_dice_after_interaction"][-1])
    session = InteractiveSession(load_interactive_model(model), precision="fp32", do_autozoom=False)
    assert session.model.network.encoder.stages[0][0].convs[0].conv.in_channels == 1 + 7
    image = np.random.default_rng(0).normal(size=(1, 20, 20, 20)).astype(np.float32)
    run = run_robot(session, image, np.pad(np.ones((6, 6, 6), bool), 7), interactions=3)
    assert len(run.dice) == 3 and len(run.seconds) >= 1


class _Interrupt(Hooks):
    def on_epoch_end(self, run: object, state: object) -> None:
        if state.current_epoch == 0:  # type: ignore[attr-defined]
            raise KeyboardInterrupt


def test_interrupted_interactive_run_resumes_exactly(interactive_data: Path, tmp_path: Path) -> None:
    """Corrections (the network in the loop) included: the resumed run ends with the uninterrupted run's weights."""
    def spec(results: Path, resume: bool = False):
        request = _request(interactive_data, results)
        return make_run_spec(fold_job(request, torch.device("cpu")), resume=resume)

    full = train(spec(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        train(spec(tmp_path / "b"), hooks=_Interrupt())
    resumed = train(spec(tmp_path / "b", resume=True), resume=True)
    wa = load_checkpoint(full.output_folder / "checkpoint_final.pth")["network_weights"]
    wb = load_checkpoint(resumed.output_folder / "checkpoint_final.pth")["network_weights"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0)
    assert full.state.logging["train_losses"] == pytest.approx(resumed.state.logging["train_losses"], abs=1e-6)


@pytest.mark.parametrize("override, message", [("full_val_every=1", "full_val_every"),
                                               ("task=nonsense", "unknown task")])
def test_settings_the_task_cannot_train_are_refused(interactive_data: Path, tmp_path: Path, override: str,
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_run_spec(fold_job(_request(interactive_data, tmp_path / "results", override), torch.device("cpu")))
    assert not (tmp_path / "results").exists()


def test_partially_labelled_datasets_are_refused(interactive_data: Path, tmp_path: Path) -> None:
    spec = json.loads((interactive_data / "dataset.json").read_text())
    spec["annotated_labels"] = {f"case_{i:03d}": ["a"] for i in range(4)}
    (interactive_data / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="annotated_labels"):
        make_run_spec(fold_job(_request(interactive_data, tmp_path / "results"), torch.device("cpu")))


def test_automatic_prediction_refuses_an_interactive_model(tmp_path: Path) -> None:
    from interactive_model import write_model_folder
    from nnseg.predictions.inference.model_folder import load_trained_model

    folder = write_model_folder(tmp_path / f"{TRAINER_NAME}__nnUNetPlans__{CONFIGURATION}")
    with pytest.raises(ValueError, match="interactive model .*nnseg serve --interactive"):
        load_trained_model(folder)


def test_epochs_flag_keeps_the_preset_and_its_folder() -> None:
    name, config = resolve_trainer(TRAINER_NAME, epochs=40, iterations_per_epoch=25)
    assert name == TRAINER_NAME and config.task == "interactive" and config.num_epochs == 40
    assert config.iterations_per_epoch == 25 and config.oversample_foreground == 1.0


def test_fine_tuning_from_an_automatic_model_starts_with_silent_prompt_channels(interactive_data: Path,
                                                                                  tmp_path: Path) -> None:
    """``-pretrained_weights`` of an automatic model: the image channel and the body are loaded, the 7 prompt channels
    start at zero (whatever ``pretrained_new_channels``), so training begins from the automatic segmentation."""
    from nnseg.launch.train import run_training
    from nnseg.training.finetune import REPORT_FILE

    from nnseg.networks import build_network

    spec = json.loads((interactive_data / "dataset.json").read_text())
    torch.manual_seed(5)
    automatic = build_network(small_plans()["configurations"][CONFIGURATION]["architecture"], input_channels=1,
                              num_classes=len(spec["labels"]), deep_supervision=True)
    source = automatic.state_dict()
    torch.save({"network_weights": source, "init_args": {"dataset_json": spec}}, tmp_path / "automatic.pth")
    request = _request(interactive_data, tmp_path / "results", "initial_lr=0.0", "pretrained_new_channels=mean")
    outcome = run_training(dataclasses.replace(request, pretrained_weights=tmp_path / "automatic.pth"))
    report = json.loads((outcome.output_folder / REPORT_FILE).read_text())
    assert len(report["channels"]) == 8 and "copied from pretrained channel 0" in report["channels"][0]
    assert all("new: zero" in c and "prompt" in c for c in report["channels"][1:])
    assert report["counts"]["skipped"] == 0 and report["counts"]["reinitialised"] > 0  # 3 labels -> 2 outputs
    tuned = load_checkpoint(outcome.output_folder / "checkpoint_final.pth")["network_weights"]
    first = "encoder.stages.0.0.convs.0.conv.weight"
    torch.testing.assert_close(tuned[first][:, :1], source[first])  # lr 0: what was loaded is what is saved
    assert tuned[first][:, 1:].abs().max() == 0
    body = [k for k in source if ".seg_layers." not in k and k in tuned and k.removeprefix("decoder.") != first
            and "all_modules" not in k]
    assert body and [k for k in body if not torch.equal(tuned[k], source[k])] == []
