"""find_best_configuration on a fake results tree: accumulation, pairwise ensembles, winner, the three files, and
instructions that our own CLI parsers accept (apply-pp is executed)."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import numpy as np
import pytest
from tiny_golden_plans import tiny_3d_configuration

from nnseg.cli.main import build_parser, main
from nnseg.cli.table import by_script
from nnseg.jsonio import load_json, save_json
from nnseg.metrics.best_config import (
    ModelId,
    inference_instructions,
    pick_best,
    predict_commands,
)
from nnseg.metrics.crossval import accumulate_crossval_results, ensemble_name
from nnseg.predictions.export.predict_io import save_probabilities_npz, save_properties_pkl

DATASET = "Dataset001_Toy"
SHAPE = (6, 8, 8)
TRAINER_PLANS = "nnUNetTrainer__nnUNetPlans__"


def _plans(configurations: dict) -> dict:
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": configurations}


PLANS = _plans({"2d": {"data_identifier": "a"}, "3d_fullres": {"data_identifier": "b"},
                "3d_lowres": {"data_identifier": "c", "next_stage": "3d_cascade_fullres"},
                "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}})
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 2,
                "file_ending": ".nii.gz"}
PROPS = {"sitk_stuff": {"spacing": (1.0, 1.0, 2.0), "origin": (0.0, 0.0, 0.0),
                        "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}, "spacing": [2.0, 1.0, 1.0]}


def _write_seg(seg: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(seg.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def _reference() -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:5, 2:6, 2:6] = 1
    return ref


def _foreground_probability(model: str) -> np.ndarray:
    """2d: the organ at 0.6 plus a false-positive strip at 0.6; 3d_fullres: the organ at 0.6 but one slab at 0.45,
    the strip at 0.3. Each alone is wrong somewhere; their average is right everywhere."""
    p = np.full(SHAPE, 0.1, np.float32)
    p[1:5, 2:6, 2:6] = 0.6
    if model == "2d":
        p[:, 7, :] = 0.6
    else:
        p[1, 2:6, 2:6] = 0.45
        p[:, 7, :] = 0.3
    return p


def _model_folder(results: Path, configuration: str, fold_cases: dict[int, list[str]]) -> Path:
    folder = results / DATASET / f"{TRAINER_PLANS}{configuration}"
    for fold, cases in fold_cases.items():
        validation = folder / f"fold_{fold}" / "validation"
        validation.mkdir(parents=True)
        for case in cases:
            fg = _foreground_probability(configuration)
            save_probabilities_npz(np.stack([1 - fg, fg]), validation / f"{case}.npz")
            save_properties_pkl(PROPS, validation / f"{case}.pkl")
            _write_seg((fg > 0.5).astype(np.uint8), validation / f"{case}.nii.gz")
    save_json(PLANS, folder / "plans.json")
    save_json(DATASET_JSON, folder / "dataset.json")
    return folder


@pytest.fixture
def tree(roots_env: dict[str, str]) -> dict[str, Path]:
    results, preprocessed = Path(roots_env["nnUNet_results"]), Path(roots_env["nnUNet_preprocessed"])
    gt = preprocessed / DATASET / "gt_segmentations"
    gt.mkdir(parents=True)
    for case in ("case_a", "case_b"):
        _write_seg(_reference(), gt / f"{case}.nii.gz")
    save_json(PLANS, preprocessed / DATASET / "nnUNetPlans.json")
    folders = {c: _model_folder(results, c, {0: ["case_a"], 1: ["case_b"]}) for c in ("2d", "3d_fullres")}
    return {"results": results, "preprocessed": preprocessed, "gt": gt, **folders}


def test_find_best_cli_writes_three_files_and_picks_the_ensemble(tree: dict[str, Path], roots_env: dict[str, str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["find-best", "1", "-c", "2d", "3d_fullres", "-f", "0", "1", "-np", "1"], env=roots_env, cwd=tree["results"])
    assert code == 0, capsys.readouterr().err
    dataset = tree["results"] / DATASET
    ens = ensemble_name(tree["2d"], tree["3d_fullres"], (0, 1))
    assert ens == f"ensemble___{TRAINER_PLANS}2d___{TRAINER_PLANS}3d_fullres___0_1"
    info = load_json(dataset / "inference_information.json")
    assert info["all_results"][ens] == 1.0
    assert info["all_results"][f"{TRAINER_PLANS}2d"] < 1.0 and info["all_results"][f"{TRAINER_PLANS}3d_fullres"] < 1.0
    best = info["best_model_or_ensemble"]
    assert best["selected_model_or_models"] == [
        {"configuration": "2d", "trainer": "nnUNetTrainer", "plans_identifier": "nnUNetPlans"},
        {"configuration": "3d_fullres", "trainer": "nnUNetTrainer", "plans_identifier": "nnUNetPlans"}]
    assert best["postprocessing_file"] == str(dataset / "ensembles" / ens / "postprocessing.pkl")
    assert best["result_on_crossval_pre_pp"] == best["result_on_crossval_post_pp"] == 1.0
    assert info["folds"] == [0, 1] and info["dataset_name_or_id"] == DATASET and info["ensembling_allowed"] is True
    assert [m["configuration"] for m in info["considered_models"]] == ["2d", "3d_fullres"]
    for folder in (tree["2d"], tree["3d_fullres"]):
        merged = folder / "crossval_results_folds_0_1"
        assert sorted(p.name for p in merged.glob("*.nii.gz")) == ["case_a.nii.gz", "case_b.nii.gz"]
        assert (merged / "summary.json").is_file() and (merged / "plans.json").is_file()
    for name in ("summary.json", "postprocessing.json", "postprocessing.pkl", "postprocessed"):
        assert (dataset / "ensembles" / ens / name).exists()
    text = (dataset / "inference_instructions.txt").read_text()
    assert text in capsys.readouterr().out
    commands = [line for line in text.splitlines() if line.startswith("nnUNetv2_")]
    assert [c.split()[0] for c in commands] == ["nnUNetv2_predict", "nnUNetv2_predict", "nnUNetv2_ensemble",
                                                "nnUNetv2_apply_postprocessing"]
    assert all("--save_probabilities" in c and "-f 0 1 " in c for c in commands[:2])
    for line in commands:  # every printed command is accepted by our own parser for that script
        words = shlex.split(line)
        build_parser(by_script()[words[0]], prog=words[0]).parse_args(words[1:])
    # run the postprocessing command as printed, on the ensemble's cross-validation output
    words = shlex.split(commands[-1])
    words[words.index("-i") + 1] = str(dataset / "ensembles" / ens)
    words[words.index("-o") + 1] = str(tree["results"] / "pp_out")
    assert main(["apply-pp", *words[1:]], env=roots_env, cwd=tree["results"]) == 0
    assert sorted(p.name for p in (tree["results"] / "pp_out").iterdir()) == ["case_a.nii.gz", "case_b.nii.gz"]


def test_single_model_wins_without_ensembling(tree: dict[str, Path], roots_env: dict[str, str]) -> None:
    from nnseg.metrics.best_config import find_best_configuration

    info = find_best_configuration(DATASET, tree["results"], tree["preprocessed"], configurations=("2d", "3d_fullres"),
                                   folds=(0, 1), allow_ensembling=False, num_processes=1, verbose=False)
    scores = info["all_results"]
    assert list(scores) == [f"{TRAINER_PLANS}2d", f"{TRAINER_PLANS}3d_fullres"]
    winner = max(scores, key=lambda k: scores[k])
    assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["configuration"] == winner.split("__")[-1]
    assert not (tree["results"] / DATASET / "ensembles").exists()
    text = (tree["results"] / DATASET / "inference_instructions.txt").read_text()
    assert "nnUNetv2_ensemble" not in text and "--save_probabilities" not in text


def test_untrained_configuration_in_plans_names_the_training(tree: dict[str, Path]) -> None:
    from nnseg.metrics.best_config import find_best_configuration

    with pytest.raises(FileNotFoundError, match=f"nnUNetv2_train {DATASET} 3d_lowres 0 -tr nnUNetTrainer -p nnUNetPlans --npz"):
        find_best_configuration(DATASET, tree["results"], tree["preprocessed"], folds=(0, 1), num_processes=1,
                                verbose=False)


def test_cascade_instructions_include_the_lowres_step(tree: dict[str, Path]) -> None:
    _model_folder(tree["results"], "3d_cascade_fullres", {})
    model = ModelId("nnUNetTrainer", "nnUNetPlans", "3d_cascade_fullres")
    lowres, cascade = predict_commands(DATASET, model, folds=(0, 1), results_root=tree["results"])
    assert lowres == (f"nnUNetv2_predict -d {DATASET} -i INPUT_FOLDER -o OUTPUT_FOLDER_PREV_STAGE -f 0 1 "
                      "-tr nnUNetTrainer -c 3d_lowres -p nnUNetPlans")
    assert cascade.endswith("-c 3d_cascade_fullres -p nnUNetPlans -prev_stage_predictions OUTPUT_FOLDER_PREV_STAGE")
    info = {"folds": [0, 1], "dataset_name_or_id": DATASET, "best_model_or_ensemble": {
        "postprocessing_file": "/r/with space/postprocessing.pkl", "some_plans_file": "/r/plans.json",
        "selected_model_or_models": [{"configuration": "3d_cascade_fullres", "trainer": "nnUNetTrainer",
                                      "plans_identifier": "nnUNetPlans"},
                                     {"configuration": "2d", "trainer": "nnUNetTrainer", "plans_identifier": "nnUNetPlans"}]}}
    text = inference_instructions(info, results_root=tree["results"], num_processes=8)
    lines = [x for x in text.splitlines() if x.startswith("nnUNetv2")]
    assert "-o OUTPUT_FOLDER_MODEL_1_PREV_STAGE" in lines[0] and "--save_probabilities" not in lines[0]
    assert lines[1].endswith("-prev_stage_predictions OUTPUT_FOLDER_MODEL_1_PREV_STAGE --save_probabilities")
    assert lines[3] == "nnUNetv2_ensemble -i OUTPUT_FOLDER_MODEL_1 OUTPUT_FOLDER_MODEL_2 -o OUTPUT_FOLDER -np 8"
    args = build_parser(by_script()["nnUNetv2_apply_postprocessing"], prog="x").parse_args(shlex.split(lines[4])[1:])
    assert args.pp_pkl_file == "/r/with space/postprocessing.pkl"
    predict = build_parser(by_script()["nnUNetv2_predict"], prog="x").parse_args(shlex.split(lines[1])[1:])
    assert predict.prev_stage_predictions == "OUTPUT_FOLDER_MODEL_1_PREV_STAGE" and predict.c == "3d_cascade_fullres"


def test_instructions_suggest_no_more_processes_than_cores(tree: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23.9: the postprocessing hint said -np 8 on a 2-core machine (nnU-Net's 8 stays where there are cores)."""
    import nnseg.metrics.best_config as best_config

    info = {"folds": [0], "dataset_name_or_id": DATASET, "best_model_or_ensemble": {
        "postprocessing_file": "/r/pp.pkl", "some_plans_file": "/r/plans.json",
        "selected_model_or_models": [{"configuration": "2d", "trainer": "nnUNetTrainer", "plans_identifier": "nnUNetPlans"}]}}
    for cores, expected in ((2, 2), (64, 8), (None, 1)):
        monkeypatch.setattr(best_config.os, "cpu_count", lambda cores=cores: cores)
        text = inference_instructions(info, results_root=tree["results"])
        assert f"-pp_pkl_file /r/pp.pkl -np {expected} -plans_json" in text, text


def test_accumulate_refuses_overlapping_folds_and_missing_folds(tree: dict[str, Path]) -> None:
    overlap = _model_folder(tree["results"], "3d_lowres", {0: ["case_a"], 1: ["case_a", "case_b"]})
    with pytest.raises(ValueError, match="case_a.nii.gz is predicted in more than one fold"):
        accumulate_crossval_results(overlap, folds=(0, 1), ref_folder=tree["gt"], num_processes=1)
    assert not (overlap / "crossval_results_folds_0_1").exists()
    with pytest.raises(FileNotFoundError, match="fold 2 .* nnUNetv2_train Dataset001_Toy 2d 2 -tr nnUNetTrainer"):
        accumulate_crossval_results(tree["2d"], folds=(0, 2), ref_folder=tree["gt"], num_processes=1)
    (tree["results"] / "busy").mkdir()
    (tree["results"] / "busy" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        accumulate_crossval_results(tree["2d"], folds=(0, 1), ref_folder=tree["gt"], num_processes=1,
                                    output_folder=tree["results"] / "busy")


def test_pick_best_takes_the_first_of_ties_and_never_nan() -> None:
    assert pick_best({"a": 0.5, "b": 0.7, "ensemble___a___b___0": 0.7}) == "b"
    assert pick_best({"a": float("nan"), "b": 0.1}) == "b"


def test_accumulate_cv_cli(tree: dict[str, Path], roots_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accumulate-cv", DATASET, "-c", "3d_fullres", "-f", "0", "1"], env=roots_env) == 0
    summary = load_json(tree["3d_fullres"] / "crossval_results_folds_0_1" / "summary.json")
    assert len(summary["metric_per_case"]) == 2 and summary["foreground_mean"]["Dice"] < 1.0
    assert "foreground mean Dice" in capsys.readouterr().out
    assert main(["accumulate-cv", DATASET, "-c", "3d_lowres"], env=roots_env) == 1
    assert "nnUNetv2_train" in capsys.readouterr().err


# ---------------------------------------------------------------- nnU-Net's own predictions (golden)


def _golden_tree(expected: Path, data: Path, root: Path) -> dict[str, Path]:
    """Two "models" whose fold 0 validation holds nnU-Net's Hippocampus predictions with and without TTA."""
    import shutil
    import zipfile

    model_dir = expected / "Dataset004_Hippocampus" / "model"
    name = "Dataset004_Hippocampus"
    with zipfile.ZipFile(model_dir / "model.zip") as zf:
        plans = zf.read(f"{name}/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2/plans.json")
        dataset_json = zf.read(f"{name}/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2/dataset.json")
    cases = (model_dir / "cases.txt").read_text().split()
    gt = root / "preprocessed" / name / "gt_segmentations"
    gt.mkdir(parents=True)
    for case in cases:
        shutil.copy(data / "Task04_Hippocampus" / "labelsTr" / f"{case}.nii.gz", gt / f"{case}.nii.gz")
    (root / "preprocessed" / name / "nnUNetPlans.json").write_bytes(plans)
    folders = {}
    for trainer, source in (("nnUNetTrainer_tta", "predictions_tta"), ("nnUNetTrainer_notta", "predictions_notta")):
        folder = root / "results" / name / f"{trainer}__nnUNetPlans__3d_fullres_bs2"
        shutil.copytree(model_dir / source, folder / "fold_0" / "validation")
        (folder / "plans.json").write_bytes(plans)
        (folder / "dataset.json").write_bytes(dataset_json)
        folders[trainer] = folder
    return folders


@pytest.mark.golden
def test_find_best_on_nnunet_predictions(expected_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from nnseg.metrics.best_config import find_best_configuration
    from nnseg.predictions.export.predict_io import load_probabilities_npz

    folders = _golden_tree(expected_dir, shared_data, tmp_path)
    info = find_best_configuration("Dataset004_Hippocampus", tmp_path / "results", tmp_path / "preprocessed",
                                   configurations=("3d_fullres_bs2",), trainers=("nnUNetTrainer_tta", "nnUNetTrainer_notta"),
                                   folds=(0,), num_processes=1, verbose=False)
    golden = load_json(expected_dir / "Dataset004_Hippocampus" / "model" / "summary_predictions_tta.json")
    tta = "nnUNetTrainer_tta__nnUNetPlans__3d_fullres_bs2"
    assert info["all_results"][tta] == pytest.approx(golden["foreground_mean"]["Dice"], abs=1e-12)
    ens = ensemble_name(folders["nnUNetTrainer_tta"], folders["nnUNetTrainer_notta"], (0,))
    assert set(info["all_results"]) == {tta, "nnUNetTrainer_notta__nnUNetPlans__3d_fullres_bs2", ens}
    # the ensemble is the argmax of the mean of nnU-Net's probabilities, written in the reference geometry
    out = tmp_path / "results" / "Dataset004_Hippocampus" / "ensembles" / ens
    case = "hippocampus_020"
    mean = sum(load_probabilities_npz(f / "fold_0" / "validation" / f"{case}.npz") for f in folders.values()) / 2
    written = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), np.argmax(mean, 0))
    reference = sitk.ReadImage(str(tmp_path / "preprocessed" / "Dataset004_Hippocampus" / "gt_segmentations" / f"{case}.nii.gz"))
    assert written.GetSpacing() == reference.GetSpacing() and written.GetOrigin() == reference.GetOrigin()
    best = info["best_model_or_ensemble"]
    assert best["result_on_crossval_post_pp"] >= best["result_on_crossval_pre_pp"]
    pp = load_json(Path(best["postprocessing_file"]).with_suffix(".json"))
    assert set(pp["input_folder"]["mean"]) == {"1", "2"}


# ---------------------------------------------------------------- the printed commands, executed


def _tiny_plans(golden_plans: dict, dataset: str) -> dict:
    plans = copy.deepcopy(golden_plans)
    plans["dataset_name"] = dataset
    cfg = tiny_3d_configuration(plans)
    plans["configurations"] = {"3d_tiny": cfg, "3d_tiny_b": {"inherits_from": "3d_tiny"}}
    return plans


def _tiny_model(results: Path, dataset: str, plans: dict, dataset_json: dict, configuration: str, seed: int) -> Path:
    import torch

    from nnseg.networks import build_network
    from nnseg.predictions.inference.checkpoint import save_checkpoint

    folder = results / dataset / f"{TRAINER_PLANS}{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    save_json(plans, folder / "plans.json")
    save_json(dataset_json, folder / "dataset.json")
    torch.manual_seed(seed)
    net = build_network(plans["configurations"]["3d_tiny"]["architecture"], input_channels=1, num_classes=2,
                        deep_supervision=False)
    weights = net.state_dict()
    for key in [k for k in weights if "seg_layers" in k]:  # louder, unbiased logits: every class shows up somewhere
        weights[key] = weights[key] * 30 if key.endswith("weight") else torch.zeros_like(weights[key])
    save_checkpoint({"network_weights": weights, "trainer_name": "nnUNetTrainer",
                     "init_args": {"configuration": configuration, "fold": 0}, "current_epoch": 1,
                     "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.mark.slow
def test_printed_instructions_run_as_written(expected_dir: Path, roots_env: dict[str, str], tmp_path: Path) -> None:
    """Two tiny (untrained) models predict their "validation" cases; the ground truth is their ensemble, so the
    ensemble wins; then every printed command runs, and the result equals the cross-validation postprocessed output."""
    import shutil

    import SimpleITK as sitk

    dataset, golden = "Dataset777_Tiny", expected_dir / "Dataset004_Hippocampus"
    results, preprocessed = Path(roots_env["nnUNet_results"]), Path(roots_env["nnUNet_preprocessed"])
    plans = _tiny_plans(load_json(golden / "nnUNetPlans.json"), dataset)
    dataset_json = {**load_json(golden / "dataset.json"), "labels": {"background": 0, "structure": 1}}
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = rng.normal(100, 20, size=(10 + i, 14, 12)).astype(np.float32)
        arr[2:7, 2:8, 3:9] += 150  # an object gives the untrained networks something to segment
        img = sitk.GetImageFromArray(arr)
        sitk.WriteImage(img, str(images / f"case_{i}_0000.nii.gz"))
    folders = [_tiny_model(results, dataset, plans, dataset_json, c, s) for c, s in (("3d_tiny", 0), ("3d_tiny_b", 1))]
    base = ["-i", str(images), "-d", "777", "-f", "0", "-tr", "nnUNetTrainer", "-device", "cpu", "--disable_progress_bar",
            "--save_probabilities", "-npp", "0", "-nps", "0"]
    for folder in folders:
        validation = folder / "fold_0" / "validation"
        assert main(["predict", *base, "-o", str(validation), "-c", folder.name.split("__")[-1]], env=roots_env) == 0
    gt = preprocessed / dataset / "gt_segmentations"
    assert main(["ensemble", "-i", *(str(f / "fold_0" / "validation") for f in folders), "-o", str(tmp_path / "ens")],
                env=roots_env) == 0
    gt.mkdir(parents=True)
    for f in (tmp_path / "ens").glob("*.nii.gz"):
        shutil.copy(f, gt / f.name)
    save_json(plans, preprocessed / dataset / "nnUNetPlans.json")

    assert main(["find-best", "777", "-c", "3d_tiny", "3d_tiny_b", "-f", "0", "-np", "1"], env=roots_env) == 0
    info = load_json(results / dataset / "inference_information.json")
    best = info["best_model_or_ensemble"]
    assert len(best["selected_model_or_models"]) == 2  # the ensemble won
    assert best["result_on_crossval_pre_pp"] == best["result_on_crossval_post_pp"] == 1.0
    commands = [shlex.split(x) for x in (results / dataset / "inference_instructions.txt").read_text().splitlines()
                if x.startswith("nnUNetv2_")]
    for words in commands:
        words = [str(images) if w == "INPUT_FOLDER" else str(tmp_path / w) if w.startswith("OUTPUT_FOLDER") else w
                 for w in words]
        assert main([by_script()[words[0]].name, *words[1:]], env=roots_env) == 0, words
    final = sorted((tmp_path / "OUTPUT_FOLDER_PP").glob("*.nii.gz"))
    expected = Path(info["best_model_or_ensemble"]["postprocessing_file"]).parent / "postprocessed"
    assert [f.name for f in final] == [f"case_{i}.nii.gz" for i in range(3)]
    for f in final:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(f))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(expected / f.name))))
