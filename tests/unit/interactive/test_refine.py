"""``nnseg refine`` (nnseg.interactive.refine): a label of an existing segmentation seeds the session, the corrections
refine it, the map is written with the image's geometry. Checked against the in-process InteractiveSession driven
by hand with the same seed and prompts (points, boxes, a scribble polyline, a lasso polygon, a mask file), world
coordinates against voxels, and every bad input refused with nothing written.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from interactive_model import INFERENCE_INFO, blob_image, write_model_folder
from nnseg.cli.main import main
from nnseg.interactive import InteractiveSession, load_interactive_model
from nnseg.interactive.refine import LabelPrompts, Prompt, RefineRequest, read_prompts_file, run_refinement

SHAPE = (40, 44, 48)
# voxel -> RAS: axes permuted (i runs along y, j along -x), spacings 1.5/0.8/2.0, an offset
AFFINE = np.array([[0.0, -0.8, 0.0, 30.0], [1.5, 0.0, 0.0, -12.0], [0.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refine")
    image = blob_image(shape=SHAPE)[0]
    grid = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    seg = np.zeros(SHAPE, np.uint8)
    seg[sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (20, 22, 24), (8, 10, 12))) <= 1] = 1
    seg[30:36, 5:12, 5:12] = 2
    nib.save(nib.Nifti1Image(image, AFFINE), str(root / "case_0000.nii.gz"))
    nib.save(nib.Nifti1Image(seg, AFFINE), str(root / "case.nii.gz"))
    stroke = np.zeros(SHAPE, np.uint8)
    stroke[10:30, 22, 24] = 1
    nib.save(nib.Nifti1Image(stroke, AFFINE), str(root / "stroke.nii.gz"))
    return {"root": root, "image": root / "case_0000.nii.gz", "seg": root / "case.nii.gz",
            "stroke": root / "stroke.nii.gz", "model": write_model_folder(root / "model")}


def _session(case: dict[str, Path], *, zoom: bool = False) -> tuple[InteractiveSession, np.ndarray, np.ndarray]:
    session = InteractiveSession(load_interactive_model(case["model"]), precision="fp32", do_autozoom=zoom)
    image = np.asarray(nib.load(str(case["image"])).dataobj, dtype=np.float32)[None]
    seg = np.asarray(nib.load(str(case["seg"])).dataobj).astype(np.uint8)
    session.set_image(image)
    return session, image, seg


def _seeded(session: InteractiveSession, seg: np.ndarray, label: int) -> np.ndarray:
    target = np.zeros(seg.shape, np.uint8)
    session.set_target_buffer(target)
    session.add_initial_seg_interaction((seg == label).astype(np.uint8), run_prediction=False)
    return target


def _replace(seg: np.ndarray, target: np.ndarray, label: int) -> np.ndarray:
    return np.where(target != 0, label, np.where(seg == label, 0, seg)).astype(np.uint8)


def _refine(case: dict[str, Path], out: Path, labels: list[LabelPrompts], *, zoom: bool = False,
            image: Path | None = None, **kw) -> np.ndarray:
    """``run_refinement`` in fp32 (AutoZoom off unless ``zoom``: quicker on a shared CPU), the map it wrote."""
    run_refinement(RefineRequest(image=[image or case["image"]], interactive_model=case["model"], output=out, labels=labels,
                                 segmentation=case["seg"], precision="fp32", do_autozoom=zoom, **kw))
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, AFFINE, atol=1e-5)  # the image's geometry
    return np.asarray(written.dataobj).astype(np.uint8)


def test_every_prompt_kind_equals_the_session_driven_by_hand(case: dict[str, Path], tmp_path: Path) -> None:
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps({"space": "voxel", "labels": [{"label": 1, "prompts": [
        {"type": "point", "at": [20, 22, 24]},
        {"type": "point", "at": [20, 30, 24], "positive": False},
        {"type": "box", "box": [[12, 28], [14, 30], [30, 31]]},
        {"type": "box", "corners": [[2, 2, 2], [9, 9, 2]], "positive": False},
        {"type": "scribble", "points": [[14, 16, 20], [26, 16, 20]]},
        {"type": "lasso", "points": [[10, 10, 36], [30, 10, 36], [30, 20, 36], [10, 20, 36]], "positive": False},
        {"type": "scribble", "mask": str(case["stroke"]), "positive": False},
    ]}]}))
    refined = _refine(case, tmp_path / "out.nii.gz", read_prompts_file(prompts_file), zoom=True)

    session, _, seg = _session(case, zoom=True)
    target = _seeded(session, seg, 1)
    session.add_point_interaction([20, 22, 24], include_interaction=True)
    session.add_point_interaction([20, 30, 24], include_interaction=False)
    session.add_bbox_interaction([[12, 28], [14, 30], [30, 31]], include_interaction=True)
    session.add_bbox_interaction([[2, 10], [2, 10], [2, 3]], include_interaction=False)
    scribble = np.ones((15, 3, 3), np.uint8)  # the line i = 14..26 drawn with thickness [2, 2, 2] -> 3 voxels
    session.add_scribble_interaction(scribble, include_interaction=True, interaction_bbox=[[13, 28], [15, 18], [19, 22]])
    lasso = np.ones((21, 11, 1), np.uint8)  # the filled rectangle, outline included
    session.add_lasso_interaction(lasso, include_interaction=False, interaction_bbox=[[10, 31], [10, 21], [36, 37]])
    stroke = np.asarray(nib.load(str(case["stroke"])).dataobj).astype(np.uint8)
    session.add_scribble_interaction(stroke, include_interaction=False)
    expected = _replace(seg, target, 1)
    assert not np.array_equal(expected, seg)
    np.testing.assert_array_equal(refined, expected)
    assert ((refined == 2) <= (seg == 2)).all() and (refined == 2).any()  # label 2 kept where label 1 left it


def test_world_coordinates_ras_and_lps_give_the_voxel_result(case: dict[str, Path], tmp_path: Path) -> None:
    voxels = [(20, 22, 24), (20, 30, 24)]
    ras = [tuple(float(v) for v in (AFFINE @ [*p, 1])[:3]) for p in voxels]
    lps = [(-x, -y, z) for x, y, z in ras]
    results = []
    for space, points in (("voxel", voxels), ("ras", ras), ("lps", lps)):
        prompts = (Prompt("point", space=space, points=(points[0],)),
                   Prompt("point", positive=False, space=space, points=(points[1],)))
        # the case given by name: root/case -> root/case_0000.nii.gz
        results.append(_refine(case, tmp_path / f"{space}.nii.gz", [LabelPrompts(1, prompts)], image=case["root"] / "case"))
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])


def test_labels_in_turn_and_the_seed_refined_alone(case: dict[str, Path], tmp_path: Path) -> None:
    labels = [LabelPrompts(2, (Prompt("point", points=((33, 8, 8),)),)), LabelPrompts(1, ())]
    refined = _refine(case, tmp_path / "two.nii.gz", labels, refine_seed=True)
    session, _, seg = _session(case)
    target = _seeded(session, seg, 2)
    session.add_initial_seg_interaction((seg == 2).astype(np.uint8), run_prediction=True)
    session.add_point_interaction([33, 8, 8], include_interaction=True)
    step = _replace(seg, target, 2)
    target = _seeded(session, step, 1)
    session.add_initial_seg_interaction((step == 1).astype(np.uint8), run_prediction=True)
    np.testing.assert_array_equal(refined, _replace(step, target, 1))


def _bad(case: dict[str, Path], tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    out = tmp_path / "never.nii.gz"
    code = main(["refine", "-i", str(case["image"]), "--interactive", str(case["model"]), "-o", str(out),
                 "-device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name != "in") == []
    return err


def test_bad_inputs_are_refused_before_anything_is_written(case: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    seg = str(case["seg"])
    other = tmp_path / "in"
    other.mkdir()
    small = other / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), AFFINE), str(small))
    bad_json = other / "bad.json"
    bad_json.write_text('{"labels": [{"label": 1, "prompts": [{"type": "circle", "at": [1, 2, 3]}]}]}')
    lasso_json = other / "lasso.json"
    lasso_json.write_text(json.dumps({"labels": [{"label": 1, "prompts": [
        {"type": "lasso", "points": [[1, 1, 1], [5, 1, 2], [5, 5, 3]]}]}]}))
    no_box3d = write_model_folder(other / "model2d", inference_info={
        **INFERENCE_INFO, "supported_interactions": {**INFERENCE_INFO["supported_interactions"], "bbox3d": False}})
    cases = [
        (["--label", "1", "--point", "1,2,3"], "give the segmentation to refine (--seg FILE)"),
        (["--seg", str(other / "missing.nii.gz"), "--label", "1", "--point", "1,2,3"], "missing.nii.gz does not exist"),
        (["--seg", str(small), "--label", "1", "--point", "1,2,3"], "small.nii.gz does not lie on the image's voxel grid"),
        (["--seg", seg, "--label", "1", "--point", "1,2,300"], "lie outside the image of shape [40, 44, 48]"),
        (["--seg", seg, "--label", "1", "--point", "1,2"], "--point 1,2: expected 3 comma-separated numbers"),
        (["--seg", seg, "--label", "0", "--point", "1,2,3"], "--label: the label to refine must be an integer in 1..65535"),
        (["--seg", seg, "--point", "1,2,3"], "need --label L"),
        (["--seg", seg, "--label", "Anterior", "--point", "1,2,3"], "label name(s) ['Anterior'] need an automatic model"),
        (["--seg", seg, "--label", "1"], "have no corrections"),
        (["--seg", seg, "--prompts", str(bad_json)], "bad.json: labels[0].prompts[0]: 'type' must be one of"),
        (["--seg", seg, "--label", "1", "--point", "1,2,3", "-d", "4"], "-d DATASET -c CONFIGURATION"),
        (["--seg", seg, "--label", "1", "--point", "1,2,3", "--save-automatic", str(tmp_path / "a.nii.gz")],
         "--save-automatic writes the automatic model's segmentation"),
        (["--seg", seg, "--label", "1", "--point", "1,2,3", "-i", str(other / "nocase")], "nocase does not exist (-i"),
        (["--seg", seg, "--prompts", str(other / "none.json")], "prompts file"),
        (["--seg", seg, "--label", "1", "--space", "ras", "--point", "900,0,0"], "lie outside the image"),
        (["--seg", seg, "--prompts", str(lasso_json)], "its points must share exactly one voxel coordinate"),
    ]
    for argv, message in cases:
        assert message in _bad(case, tmp_path, argv, capsys), argv
    err = _bad(case, tmp_path, ["--seg", seg, "--label", "1", "--point", "1,2,3", "-o", str(tmp_path / "x.png")], capsys)
    assert "which writes ['.nii.gz', '.nrrd', '.mha'" in err and not (tmp_path / "x.png").exists()
    err = main(["refine", "-i", str(case["image"]), str(case["image"]), "--interactive", str(case["model"]),
                "-o", str(tmp_path / "x.nii.gz"), "--seg", seg, "--label", "1", "--point", "1,2,3", "-device", "cpu"])
    assert err == 1 and "takes 1 image channel(s), the image has 2" in capsys.readouterr().err
    err = main(["refine", "-i", str(case["image"]), "--interactive", str(no_box3d), "-o", str(tmp_path / "x.nii.gz"),
                "--seg", seg, "--label", "1", "--box", "1,1,1,5,5,5", "-device", "cpu"])
    assert err == 1 and "does not take bbox3d prompts" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_an_image_that_cannot_fit_is_refused_from_its_header_before_reading(case: dict[str, Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from nnseg.raw.io_sitk import SimpleITKIO

    def unread(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image's voxels were read")

    monkeypatch.setattr(SimpleITKIO, "read_images", unread)
    err = _bad(case, tmp_path, ["--seg", str(case["seg"]), "--label", "1", "--point", "20,22,24",
                                "--max-memory", "0.001"], capsys)
    for part in ("shape [1, 40, 44, 48]", "does not fit in memory", "(--max-memory 0.001)", "Raise --max-memory",
                 "crop the image", "Nothing was allocated or written"):
        assert part in err, (part, err)


def test_max_memory_bounds_the_refinement_and_the_automatic_model(case: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from nnseg.interactive.refine import run as refine_run
    from nnseg.predictions.inference.memory_plan import CaseDoesNotFit
    from nnseg.predictions.inference.options import PredictOptions

    labels = [LabelPrompts(1, (Prompt("point", points=((20, 22, 24),)),))]
    monkeypatch.setattr(refine_run, "header_shape", lambda files, io: None)  # a reader without a header read
    with pytest.raises(CaseDoesNotFit, match=r"shape \[1, 40, 44, 48\].*\(--max-memory 0.001\)"):
        _refine(case, tmp_path / "out.nii.gz", labels, max_memory_gb=0.001)  # checked right after reading
    assert not (tmp_path / "out.nii.gz").exists()
    assert _refine(case, tmp_path / "out.nii.gz", labels, max_memory_gb=64)[20, 22, 24] == 1
    with pytest.raises(ValueError, match="--max-memory must be a positive number of GB, got -1"):
        _refine(case, tmp_path / "neg.nii.gz", labels, max_memory_gb=-1)
    request = RefineRequest(image=[case["image"]], interactive_model=case["model"], output=tmp_path / "o.nii.gz",
                            labels=labels, model=tmp_path, max_memory_gb=3)
    assert refine_run._predict_options(request).max_memory_gb == 3
    own = replace(request, predict_options=PredictOptions(max_memory_gb=5))
    assert refine_run._predict_options(own).max_memory_gb == 5


def test_a_new_label_above_255_widens_the_map(case: dict[str, Path], tmp_path: Path) -> None:
    refined = run_refinement(RefineRequest(
        image=[case["image"]], interactive_model=case["model"], output=tmp_path / "wide.nrrd", segmentation=case["seg"],
        labels=[LabelPrompts(300, (Prompt("point", points=((20, 22, 24),)),))], precision="fp32", do_autozoom=False))
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(refined.output))).transpose(2, 1, 0)  # NRRD: the writer's too
    assert array.dtype == np.uint16 and array[20, 22, 24] == 300 and refined.changed_voxels[300] > 0
    seg = np.asarray(nib.load(str(case["seg"])).dataobj)
    assert set(np.unique(array)) <= {0, 1, 2, 300} and ((array == 2) <= (seg == 2)).all()
