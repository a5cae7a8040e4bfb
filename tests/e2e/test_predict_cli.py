"""The prediction commands end to end on a tiny synthetic model: install, predict, continue, shard, ensemble, errors."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny_golden_plans import tiny_3d_configuration

from nnseg.cli.main import main
from nnseg.networks import build_network
from nnseg.predictions.inference.checkpoint import save_checkpoint

DATASET = "Dataset777_Tiny"
MODEL = "nnUNetTrainer_5epochs__nnUNetPlans__3d_tiny"
CASES = ("case_a", "case_b", "case_c")


def _plans(expected_plans: dict) -> dict:
    plans = copy.deepcopy(expected_plans)
    plans["dataset_name"] = DATASET
    cfg = tiny_3d_configuration(plans)
    cascade = {"inherits_from": "3d_tiny", "previous_stage": "3d_tiny", "data_identifier": "nnUNetPlans_3d_cascade"}
    cfg2d = copy.deepcopy(plans["configurations"]["2d"])
    cfg2d.update(patch_size=[16, 16], spacing=[1.0, 1.0])
    cfg2d["architecture"]["arch_kwargs"].update(n_stages=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3]] * 2,
                                                strides=[[1, 1], [2, 2]], n_conv_per_stage=[1, 1],
                                                n_conv_per_stage_decoder=[1])
    plans["configurations"] = {"3d_tiny": cfg, "3d_cascade_tiny": cascade, "2d_tiny": cfg2d}
    return plans


def _model_folder(root: Path, plans: dict, dataset: dict, configuration: str, input_channels: int, seed: int) -> Path:
    folder = root / DATASET / f"nnUNetTrainer_5epochs__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    torch.manual_seed(seed)
    arch = plans["configurations"][plans["configurations"][configuration].get("inherits_from", configuration)]["architecture"]
    net = build_network(arch, input_channels=input_channels, num_classes=3, deep_supervision=False)
    axes = (0, 1) if configuration.startswith("2d") else (0, 1, 2)
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer_5epochs",
                     "init_args": {"configuration": configuration, "fold": 0}, "current_epoch": 5,
                     "inference_allowed_mirroring_axes": axes}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.fixture
def setup(tmp_path: Path, roots_env: dict[str, str], expected_dir: Path) -> dict[str, Path]:
    golden = expected_dir / "Dataset004_Hippocampus"
    plans = _plans(json.loads((golden / "nnUNetPlans.json").read_text()))
    dataset = json.loads((golden / "dataset.json").read_text())
    staging = _model_folder(tmp_path / "staging", plans, dataset, "3d_tiny", 1, 0)
    _model_folder(tmp_path / "other_models", plans, dataset, "3d_cascade_tiny", 3, 1)
    _model_folder(tmp_path / "other_models", plans, dataset, "2d_tiny", 1, 2)
    zip_path = tmp_path / "model.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in staging.rglob("*"):
            zf.write(f, f.relative_to(tmp_path / "staging").as_posix())
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, case in enumerate(CASES):
        img = sitk.GetImageFromArray(rng.normal(100, 20, size=(12 + i, 20, 18)).astype(np.float32))
        img.SetSpacing((1.0, 1.0, 1.0))
        img.SetOrigin((float(i), 2.0, 3.0))
        sitk.WriteImage(img, str(images / f"{case}_0000.nii.gz"))
    return {"zip": zip_path, "images": images, "results": Path(roots_env["nnUNet_results"]), "tmp": tmp_path}


def _predict(env: dict[str, str], images: Path, out: Path, *extra: str) -> int:
    return main(["predict", "-i", str(images), "-o", str(out), "-d", "777", "-c", "3d_tiny", "-tr", "nnUNetTrainer_5epochs",
                 "-f", "0", "-device", "cpu", "--disable_progress_bar", *extra], env=env)


def test_install_predict_continue_shard_ensemble(setup: dict[str, Path], roots_env: dict[str, str], capsys) -> None:
    assert main(["install-model", str(setup["zip"])], env=roots_env) == 0
    assert (setup["results"] / DATASET / MODEL / "fold_0" / "checkpoint_final.pth").is_file()
    out = setup["tmp"] / "out"
    assert _predict(roots_env, setup["images"], out, "--save_probabilities", "--precision", "fp32", "-npp", "1", "-nps", "1") == 0
    for case in CASES:
        seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        src = sitk.ReadImage(str(setup["images"] / f"{case}_0000.nii.gz"))
        assert seg.GetSize() == src.GetSize() and seg.GetOrigin() == src.GetOrigin()
        probs = np.load(out / f"{case}.npz")["probabilities"]
        assert probs.shape == (3, *sitk.GetArrayFromImage(src).shape)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), probs.argmax(0))
    args = json.loads((out / "predict_from_raw_data_args.json").read_text())
    assert args["folds"] == [0] and args["precision"] == "fp32"
    assert not list(out.glob(".*"))  # no temporary files left

    before = (out / "case_a.nii.gz").stat().st_mtime_ns
    assert _predict(roots_env, setup["images"], out, "--save_probabilities", "--continue_prediction") == 0
    assert (out / "case_a.nii.gz").stat().st_mtime_ns == before
    assert "3 already done" in capsys.readouterr().err

    shard = setup["tmp"] / "shard"
    assert _predict(roots_env, setup["images"], shard, "-num_parts", "2", "-part_id", "1", "--disable_tta",
                    "-npp", "0", "-nps", "0") == 0
    assert sorted(p.name for p in shard.glob("*.nii.gz")) == ["case_b.nii.gz"]

    other = setup["tmp"] / "other"
    model_folder = setup["results"] / DATASET / MODEL
    assert main(["predict-from-modelfolder", "-i", str(setup["images"]), "-o", str(other), "-m", str(model_folder),
                 "-f", "0", "-device", "cpu", "--disable_tta", "--save_probabilities", "--disable_progress_bar"],
                env=roots_env) == 0
    ens = setup["tmp"] / "ens"
    assert main(["ensemble", "-i", str(out), str(other), "-o", str(ens), "--save_npz"], env=roots_env) == 0
    mean = (np.load(out / "case_c.npz")["probabilities"] + np.load(other / "case_c.npz")["probabilities"]) / 2
    np.testing.assert_allclose(np.load(ens / "case_c.npz")["probabilities"], mean, atol=1e-6)
    ens_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ens / "case_c.nii.gz")))
    np.testing.assert_array_equal(ens_seg, mean.argmax(0))


def test_errors_are_clear(setup: dict[str, Path], roots_env: dict[str, str], capsys) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "4", "2d", "0", "--npz"], env=roots_env)
    err = capsys.readouterr().err
    assert "nnseg predict -i IMAGES -o OUT -d 4 -c 2d -f 0 --save_probabilities" in err
    assert main(["install-model", str(setup["zip"])], env=roots_env) == 0
    capsys.readouterr()
    assert _predict(roots_env, setup["images"], setup["tmp"] / "o", "-f", "0", "1") == 1
    err = capsys.readouterr().err
    assert "fold_1/checkpoint_final.pth" in err and "fold_0: ['checkpoint_final.pth']" in err
    assert main(["predict", "-i", str(setup["images"]), "-o", "x", "-d", "777", "-c", "3d_fullres"], env=roots_env) == 1
    assert MODEL in capsys.readouterr().err  # the model folders that exist are listed
    assert _predict(roots_env, setup["images"], setup["tmp"] / "o", "-f", "first") == 1
    assert "fold 'first' is not a fold number" in capsys.readouterr().err
    assert _predict(roots_env, setup["tmp"] / "nowhere", setup["tmp"] / "o") == 1
    assert "input folder" in capsys.readouterr().err


@pytest.mark.slow
def test_cascade_2d_and_in_memory_prediction(setup: dict[str, Path]) -> None:
    from nnseg.predictions.run.predict import Predictor, predict, predict_arrays
    from nnseg.raw.image_io import get_io

    models = setup["tmp"] / "other_models" / DATASET
    lowres = setup["tmp"] / "staging" / DATASET / MODEL
    first = setup["tmp"] / "first"
    predict(lowres, setup["images"], first, folds=(0,), device="cpu", use_tta=False, progress=False)
    cascade = Predictor.from_model_folder(models / "nnUNetTrainer_5epochs__nnUNetPlans__3d_cascade_tiny", folds=(0,),
                                          device="cpu", precision="fp32", use_tta=False)
    assert cascade.model.num_input_channels == 3
    with pytest.raises(ValueError, match="-prev_stage_predictions"):
        predict(cascade, setup["images"], setup["tmp"] / "no_prev", progress=False)
    second = setup["tmp"] / "second"
    predict(cascade, setup["images"], second, prev_stage_predictions=first, progress=False)
    assert sorted(p.name for p in second.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]

    two_d = Predictor.from_model_folder(models / "nnUNetTrainer_5epochs__nnUNetPlans__2d_tiny", folds=(0,), device="cpu",
                                        precision="fp32")
    out2d = setup["tmp"] / "out2d"
    predict(two_d, setup["images"], out2d, save_probabilities=True, progress=False)
    data, geometry = get_io("SimpleITKIO").read_images([setup["images"] / "case_b_0000.nii.gz"])
    [(seg, probs)] = predict_arrays(two_d, [data], [geometry], return_probabilities=True)
    np.testing.assert_array_equal(seg, sitk.GetArrayFromImage(sitk.ReadImage(str(out2d / "case_b.nii.gz"))))
    np.testing.assert_allclose(probs, np.load(out2d / "case_b.npz")["probabilities"], atol=1e-6)
    assert seg.shape == data.shape[1:]
