"""Postprocessing: largest-component rules, nnU-Net's greedy decision on a hand-built case, .pkl/.json round trips."""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from nnseg.jsonio import load_json, save_json
from nnseg.metrics.postprocess import (
    PostprocessingStep,
    apply_postprocessing,
    improves_all_foreground,
    load_postprocessing,
    remove_all_but_largest_component,
    remove_all_but_largest_component_from_segmentation,
)
from nnseg.metrics.postprocess_folder import (
    apply_postprocessing_to_folder,
    determine_postprocessing_for_folder,
)
from nnseg.metrics.postprocess_pkl import (
    NNUNET_PP_FUNCTION,
    load_postprocessing_pkl,
    postprocessing_pkl_bytes,
)

LARGEST = "remove_all_but_largest_component"


def test_full_connectivity_by_default_joins_diagonal_voxels() -> None:
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touch at a corner only
    mask[2, 2, 0] = True  # corner neighbour of (1, 1, 1)
    assert remove_all_but_largest_component(mask).sum() == 3
    faces = remove_all_but_largest_component(mask, connectivity=1)
    assert faces.sum() == 3  # three single-voxel components tie: all kept (acvl_utils' rule)
    mask[2, 2, 0] = False
    mask[0, 0, 1] = True  # face neighbour of (0,0,0): component of 2 vs isolated (1,1,1) under face connectivity
    only_faces = remove_all_but_largest_component(mask, connectivity=1)
    assert only_faces.sum() == 2 and not only_faces[1, 1, 1]
    assert remove_all_but_largest_component(mask).sum() == 3


def test_empty_mask_and_bad_connectivity() -> None:
    assert not remove_all_but_largest_component(np.zeros((4, 4), bool)).any()
    with pytest.raises(ValueError, match="connectivity must be between 1 and 2"):
        remove_all_but_largest_component(np.zeros((4, 4), bool), connectivity=3)


def test_segmentation_step_union_regions_and_background() -> None:
    seg = np.zeros((1, 10, 10), np.uint8)
    seg[0, 0:3, 0:3] = 1
    seg[0, 3:5, 0:3] = 2  # touches label 1: union is one component
    seg[0, 8:10, 8:10] = 2  # a separate component of label 2
    union = remove_all_but_largest_component_from_segmentation(seg, [1, 2])
    assert (union[0, 8:, 8:] == 0).all() and (union[0, :5, :3] == seg[0, :5, :3]).all()
    only2 = remove_all_but_largest_component_from_segmentation(seg, 2, background_label=7)
    assert (only2[0, 8:, 8:] == 7).all() and (only2[0, 3:5, :3] == 2).all()
    region = remove_all_but_largest_component_from_segmentation(seg, (1, 2))
    np.testing.assert_array_equal(region, union)
    assert seg[0, 9, 9] == 2  # input untouched
    steps = [PostprocessingStep(LARGEST, {"labels_or_regions": 2})]
    np.testing.assert_array_equal(apply_postprocessing(seg, steps), remove_all_but_largest_component_from_segmentation(seg, 2))


def test_rule_one_needs_every_class_to_stay() -> None:
    before = {"foreground_mean": {"Dice": 0.9}, "mean": {1: {"Dice": 0.8}, 2: {"Dice": 1.0}}}
    after = {"foreground_mean": {"Dice": 0.95}, "mean": {1: {"Dice": 1.0}, 2: {"Dice": 0.9}}}
    assert not improves_all_foreground(before, after)
    after["mean"][2]["Dice"] = 1.0
    assert improves_all_foreground(before, after)
    after["foreground_mean"]["Dice"] = float("nan")
    assert not improves_all_foreground(before, after)


# ---------------------------------------------------------------- hand-built case on disk


def _write(seg: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(seg.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Reference: label 1 block A, label 2 block B touching A, plus a 1-voxel label-2 island C.
    Prediction: A, B, C right, plus a stray label-1 block D (48 voxels) far from A."""
    ref = np.zeros((12, 16, 16), np.uint8)
    ref[0:4, 0:6, 0:6] = 1  # A: 144 voxels
    ref[0:2, 6:9, 0:3] = 2  # B: 18 voxels, touches A
    ref[11, 15, 15] = 2  # C: one voxel far away
    pred = ref.copy()
    pred[8:11, 10:14, 0:4] = 1  # D: 48 false-positive voxels
    return ref, pred


@pytest.fixture
def pp_folders(tmp_path: Path) -> tuple[Path, Path]:
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref, pred = _case()
    _write(ref, ref_dir / "case_000.nii.gz")
    _write(pred, pred_dir / "case_000.nii.gz")
    clean_ref = np.zeros_like(ref)
    clean_ref[2:6, 2:8, 2:8] = 1
    clean_ref[6:8, 2:8, 2:8] = 2
    _write(clean_ref, ref_dir / "case_001.nii.gz")
    _write(clean_ref, pred_dir / "case_001.nii.gz")
    save_json({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 2,
               "file_ending": ".nii.gz"}, pred_dir / "dataset.json")
    save_json({"dataset_name": "Dataset001_T", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
               "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {}},
              pred_dir / "plans.json")
    return pred_dir, ref_dir


def test_determine_postprocessing_reproduces_nnunet_decision(pp_folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = pp_folders
    decision = determine_postprocessing_for_folder(pred_dir, ref_dir, num_processes=1, verbose=False)
    # rule 1 would raise the foreground mean (label 1 loses D) but label 2 loses C: rejected.
    # rule 2: label 1 improves (D removed) -> kept; label 2 gets worse (C removed) -> rejected.
    assert decision.steps == [PostprocessingStep(LARGEST, {"labels_or_regions": 1, "background_label": 0})]
    info = load_json(pred_dir / "postprocessing.json")
    assert info["postprocessing_fns"] == [NNUNET_PP_FUNCTION[1]]
    assert info["postprocessing_kwargs"] == [{"labels_or_regions": 1}]
    assert info["steps"] == [{"name": LARGEST, "kwargs": {"labels_or_regions": 1, "background_label": 0}}]
    before, after = info["input_folder"], info["postprocessed"]
    assert set(before) == {"foreground_mean", "mean"} and set(before["mean"]) == {"1", "2"}
    assert before["mean"]["1"]["Dice"] == pytest.approx((2 * 144 / (2 * 144 + 48) + 1) / 2)
    assert after["mean"]["1"]["Dice"] == 1.0 and after["mean"]["2"]["Dice"] == 1.0
    out = pred_dir / "postprocessed"
    assert sorted(p.name for p in out.iterdir()) == ["case_000.nii.gz", "case_001.nii.gz", "summary.json"]
    assert load_json(out / "summary.json")["foreground_mean"]["Dice"] == 1.0
    assert load_postprocessing_pkl(pred_dir / "postprocessing.pkl") == [(LARGEST, {"labels_or_regions": 1})]


def test_rule_one_is_taken_when_no_class_gets_worse(pp_folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = pp_folders
    ref, pred = _case()
    ref[11, 15, 15] = 0  # no island in the reference: C is a false positive too
    pred[11, 15, 15] = 2
    _write(ref, ref_dir / "case_000.nii.gz")
    _write(pred, pred_dir / "case_000.nii.gz")
    decision = determine_postprocessing_for_folder(pred_dir, ref_dir, num_processes=1, verbose=False,
                                                   keep_postprocessed=False)
    # union rule removes D and C at once; afterwards each label alone has one component: nothing more to gain
    assert [s.kwargs["labels_or_regions"] for s in decision.steps] == [[1, 2]]
    assert not (pred_dir / "postprocessed").exists()
    assert decision.after["foreground_mean"]["Dice"] == 1.0


def test_apply_postprocessing_from_pkl_and_json_match(pp_folders: tuple[Path, Path], tmp_path: Path) -> None:
    import SimpleITK as sitk

    pred_dir, ref_dir = pp_folders
    determine_postprocessing_for_folder(pred_dir, ref_dir, num_processes=1, verbose=False)
    outputs = {}
    for name in ("postprocessing.pkl", "postprocessing.json"):
        out = tmp_path / f"out_{name}"
        workers = 2 if name.endswith(".json") else 1  # the json run goes through a spawn pool
        written = apply_postprocessing_to_folder(pred_dir, out, pred_dir / name, num_processes=workers)
        assert [p.name for p in written] == ["case_000.nii.gz", "case_001.nii.gz"]
        outputs[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_000.nii.gz")))
        assert sitk.ReadImage(str(out / "case_000.nii.gz")).GetSpacing() == (1.0, 1.0, 2.0)
    ref, _ = _case()
    np.testing.assert_array_equal(outputs["postprocessing.pkl"], ref)
    np.testing.assert_array_equal(outputs["postprocessing.json"], ref)
    with pytest.raises(ValueError, match="is the input folder"):
        apply_postprocessing_to_folder(pred_dir, pred_dir, pred_dir / "postprocessing.json", num_processes=1)


def test_missing_plans_in_folder_says_which_flag(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    with pytest.raises(FileNotFoundError, match="-plans_json"):
        determine_postprocessing_for_folder(tmp_path / "p", tmp_path, num_processes=1)


# ---------------------------------------------------------------- postprocessing.pkl


def _fake_nnunet(monkeypatch: pytest.MonkeyPatch) -> types.FunctionType:
    """A stand-in nnunetv2 module tree so the C pickler can write what nnU-Net writes."""
    module_name, fn_name = NNUNET_PP_FUNCTION
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))

    def fn(segmentation, labels_or_regions, background_label=0):  # type: ignore[no-untyped-def]
        raise AssertionError("must never be called")

    fn.__module__, fn.__name__, fn.__qualname__ = module_name, fn_name, fn_name
    setattr(sys.modules[module_name], fn_name, fn)
    return fn  # type: ignore[return-value]


def test_pkl_bytes_equal_what_nnunet_pickles(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [(LARGEST, {"labels_or_regions": [1, 2, 3]}), (LARGEST, {"labels_or_regions": (2, 3), "background_label": 0})]
    ours = postprocessing_pkl_bytes(steps)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(ours)]
    assert ("SHORT_BINUNICODE", NNUNET_PP_FUNCTION[0]) in ops and ("SHORT_BINUNICODE", NNUNET_PP_FUNCTION[1]) in ops
    assert [name for name, _ in ops].count("STACK_GLOBAL") == 1  # the same function is memoised, as pickle does
    assert "nnunetv2" not in sys.modules
    fn = _fake_nnunet(monkeypatch)
    theirs = pickle.dumps(([fn, fn], [{"labels_or_regions": [1, 2, 3]}, {"labels_or_regions": (2, 3)}]), protocol=4)
    assert ours == theirs
    assert pickle.loads(ours)[0][0] is fn  # nnU-Net gets its own function back


def test_restricted_reader_reads_nnunet_pkl_with_numpy_labels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fn = _fake_nnunet(monkeypatch)
    labels = list(np.unique(np.array([1, 2], dtype=np.int64)))  # nnU-Net's LabelManager gives np.int64
    path = tmp_path / "postprocessing.pkl"
    path.write_bytes(pickle.dumps(([fn, fn], [{"labels_or_regions": labels}, {"labels_or_regions": (1, 2)}])))
    monkeypatch.undo()
    steps = load_postprocessing(path)
    assert steps == [PostprocessingStep(LARGEST, {"labels_or_regions": [1, 2]}),
                     PostprocessingStep(LARGEST, {"labels_or_regions": (1, 2)})]
    assert all(type(v) is int for v in steps[0].kwargs["labels_or_regions"])


def test_restricted_reader_refuses_other_globals(tmp_path: Path) -> None:
    path = tmp_path / "postprocessing.pkl"
    path.write_bytes(pickle.dumps(([print], [{}])))
    with pytest.raises(ValueError, match="builtins.print"):
        load_postprocessing(path)
    buffer = io.BytesIO()
    pickle.dump({"not": "a pair"}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="pp_fns, pp_fn_kwargs"):
        load_postprocessing(path)
    with pytest.raises(FileNotFoundError, match="determine-pp"):
        load_postprocessing(tmp_path / "missing.pkl")


def test_nnunet_postprocessing_json_without_steps_is_understood(tmp_path: Path) -> None:
    path = tmp_path / "postprocessing.json"
    save_json({"postprocessing_fns": [NNUNET_PP_FUNCTION[1]], "postprocessing_kwargs": [{"labels_or_regions": [[1, 2], 3]}]},
              path)
    assert load_postprocessing(path) == [PostprocessingStep(LARGEST, {"labels_or_regions": [(1, 2), 3]})]


def test_regions_are_postprocessed_per_region(tmp_path: Path) -> None:
    """Regions whole=(1, 2), core=(2,): the union rule would drop a true label-1 island (whole gets worse), the
    per-region rule for (2,) drops a stray label-2 block."""
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[0:4, 0:6, 0:6] = 1
    ref[1:3, 2:4, 2:4] = 2  # core inside whole
    ref[8:10, 10:12, 10:12] = 1  # T: a true 8-voxel island
    pred = ref.copy()
    pred[9, 0:2, 10:12] = 2  # S: 4 stray core voxels
    for folder, seg in (("ref", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        _write(seg, tmp_path / folder / "case_000.nii.gz")
    save_json({"channel_names": {"0": "MR"}, "labels": {"background": 0, "whole": [1, 2], "core": [2]},
               "regions_class_order": [1, 2], "numTraining": 1, "file_ending": ".nii.gz"}, tmp_path / "pred" / "dataset.json")
    save_json({"dataset_name": "Dataset002_R", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
               "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {}},
              tmp_path / "pred" / "plans.json")
    decision = determine_postprocessing_for_folder(tmp_path / "pred", tmp_path / "ref", num_processes=1, verbose=False)
    assert decision.steps == [PostprocessingStep(LARGEST, {"labels_or_regions": (2,), "background_label": 0})]
    assert set(decision.after["mean"]) == {(1, 2), (2,)} and decision.after["foreground_mean"]["Dice"] == 1.0
    info = load_json(tmp_path / "pred" / "postprocessing.json")
    assert set(info["postprocessed"]["mean"]) == {"(1, 2)", "(2,)"}
    assert load_postprocessing_pkl(tmp_path / "pred" / "postprocessing.pkl") == [(LARGEST, {"labels_or_regions": (2,)})]
    # the JSON form reads back to the same voxels
    seg = pred.astype(np.int64)
    np.testing.assert_array_equal(apply_postprocessing(seg, load_postprocessing(tmp_path / "pred" / "postprocessing.json")),
                                  ref)


def test_pkl_refuses_arguments_nnunet_cannot_take() -> None:
    with pytest.raises(ValueError, match="connectivity=1 has no nnU-Net equivalent"):
        postprocessing_pkl_bytes([(LARGEST, {"labels_or_regions": 1, "connectivity": 1})])
    with pytest.raises(ValueError, match="no nnU-Net equivalent"):
        postprocessing_pkl_bytes([("fill_holes", {})])


def test_determine_and_apply_cli(pp_folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nnseg.cli.main import main

    pred_dir, ref_dir = pp_folders
    env = {"HOME": str(tmp_path)}
    assert main(["determine-pp", "-i", str(pred_dir), "-ref", str(ref_dir), "-np", "1", "--remove_postprocessed"],
                env=env, cwd=tmp_path) == 0
    out = capsys.readouterr().out
    assert "remove_all_but_largest_component(1)" in out and "postprocessing.json" in out
    assert not (pred_dir / "postprocessed").exists() and (pred_dir / "postprocessing.pkl").is_file()
    assert main(["apply-pp", "-i", str(pred_dir), "-o", str(tmp_path / "o"), "-pp_pkl_file", str(pred_dir / "plans.json"),
                 "-np", "1"], env=env, cwd=tmp_path) == 1
    assert "plans.json" in capsys.readouterr().err
    assert main(["apply-pp", "-i", str(pred_dir), "-o", str(tmp_path / "o"), "-pp_pkl_file", "postprocessing.txt"],
                env=env, cwd=tmp_path) == 1
    assert "must be postprocessing.json or postprocessing.pkl" in capsys.readouterr().err
    assert main(["determine-pp", "-i", str(tmp_path / "nope"), "-ref", str(ref_dir)], env=env, cwd=tmp_path) == 1
    assert "-plans_json" in capsys.readouterr().err
