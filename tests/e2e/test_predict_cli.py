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

from nnseg.cli.main import main
from nnseg.networks import build_network
from nnseg.predictions.checkpoint import save_checkpoint

DATASET = "Dataset777_Tiny"
MODEL = "nnUNetTrainer_5epochs__nnUNetPlans__3d_tiny"
CASES = ("case_a", "case_b", "case_c")


def _plans(expected_plans: dict) -> dict:
    plans = copy.deepcopy(expected_plans)
    plans["dataset_name"] = DATASET
    cfg = copy.deepcopy(plans["configurations"]["3d_fullres"])
    cfg.update(patch_size=[16, 16, 16], spacing=[1.0, 1.0, 1.0], data_identifier="nnUNetPlans_3d_tiny")
    cfg["architecture"]["arch_kwargs"].update(n_stages=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                                              strides=[[1, 1, 1], [2, 2, 2]], n_conv_per_stage=[1, 1],
                                              n_conv_per_stage_decoder=[1])
    plans["configurations"] = {"3d_tiny": cfg}
    return plans


@pytest.fixture
def setup(tmp_path: Path, roots_env: dict[str, str], expected_dir: Path) -> dict[str, Path]:
    golden = expected_dir / "Dataset004_Hippocampus"
    plans = _plans(json.loads((golden / "nnUNetPlans.json").read_text()))
    dataset = json.loads((golden / "dataset.json").read_text())
    staging = tmp_path / "staging" / DATASET / MODEL
    (staging / "fold_0").mkdir(parents=True)
    (staging / "plans.json").write_text(json.dumps(plans, indent=4))
    (staging / "dataset.json").write_text(json.dumps(dataset, indent=4))
    torch.manual_seed(0)
    net = build_network(plans["configurations"]["3d_tiny"]["architecture"], input_channels=1, num_classes=3,
                        deep_supervision=False)
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer_5epochs",
                     "init_args": {"configuration": "3d_tiny", "fold": 0}, "current_epoch": 5,
                     "inference_allowed_mirroring_axes": (0, 1, 2)}, staging / "fold_0" / "checkpoint_final.pth")
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
