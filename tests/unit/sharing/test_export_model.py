"""Model export to zip: nnU-Net's entry list, install round trip, optimizer stripping, clear errors."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nnseg.cli.main import main
from nnseg.networks import build_network
from nnseg.predictions.inference.checkpoint import load_checkpoint, network_state_dict, save_checkpoint
from nnseg.sharing.export_model import export_model_zip, parse_ensemble_name
from nnseg.sharing.install import install_model_zip

DS = "Dataset042_Fake"
ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1],
        "n_conv_per_stage_decoder": [1], "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
ENS = "ensemble___nnUNetTrainer__nnUNetPlans__2d___nnUNetTrainer__nnUNetPlans__3d_fullres___0_1"
ENS_OTHER = "ensemble___nnUNetTrainer__nnUNetPlans__3d_lowres___nnUNetTrainer__nnUNetPlans__3d_fullres___0_1"


@functools.lru_cache(maxsize=None)
def _checkpoint_cached(seed: int) -> dict:
    torch.manual_seed(seed)
    net = build_network(ARCH, input_channels=1, num_classes=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    out = net(torch.randn(1, 1, 8, 8, 8))
    sum(o.sum() for o in out).backward()
    opt.step()
    return {"network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
            "logging": {"train_losses": [np.float64(0.5)], "ema_fg_dice": [np.float32(0.1)]}, "_best_ema": 0.1,
            "current_epoch": 1, "init_args": {"configuration": "3d_fullres", "fold": 0}, "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2)}


def _checkpoint(seed: int) -> dict:
    return copy.deepcopy(_checkpoint_cached(seed))


def _write(path: Path, data: bytes | str = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def make_model(results: Path, configuration: str, folds=(0, 1)) -> Path:
    """A model folder as nnU-Net's trainer and find_best_configuration leave it."""
    model = results / DS / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    plans = {"dataset_name": DS, "plans_name": "nnUNetPlans", "configurations": {configuration: {"architecture": ARCH}}}
    _write(model / "plans.json", json.dumps(plans))
    _write(model / "dataset.json", json.dumps({"labels": {"background": 0, "a": 1}, "channel_names": {"0": "CT"}}))
    _write(model / "dataset_fingerprint.json", "{}")
    for k in folds:
        fold = model / f"fold_{k}"
        save_checkpoint(_checkpoint(k), fold / "checkpoint_final.pth")
        save_checkpoint(_checkpoint(k + 10), fold / "checkpoint_best.pth")
        for name in ("debug.json", "progress.png", "validation/summary.json", "validation/c1.nii.gz",
                     "validation/c1.npz", "validation/c1.pkl"):
            _write(fold / name)
    cv = model / "crossval_results_folds_0_1"
    for name in ("summary.json", "postprocessing.pkl", "postprocessing.json", "c1.nii.gz"):
        _write(cv / name)
    _write(cv / "postprocessed" / "c1.nii.gz")
    return model


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per module (checkpoints take a moment); each test gets a copy."""
    root = tmp_path_factory.mktemp("template") / "trained_results"
    make_model(root, "3d_fullres")
    make_model(root, "2d")
    for ens in (ENS, ENS_OTHER):
        for name in ("summary.json", "postprocessing.pkl", "postprocessing.json", "c1.nii.gz"):
            _write(root / DS / "ensembles" / ens / name)
    _write(root / DS / "inference_information.json", "{}")
    _write(root / DS / "inference_instructions.txt", "nnUNetv2_predict ...")
    return root


@pytest.fixture
def results(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "trained_results"))


def _model_entries(config: str, folds=(0, 1), extra_fold=(), extra_cv=()) -> set[str]:
    m = f"{DS}/nnUNetTrainer__nnUNetPlans__{config}"
    out = {f"{m}/plans.json", f"{m}/dataset.json", f"{m}/dataset_fingerprint.json"}
    for k in folds:
        out |= {f"{m}/fold_{k}/{n}" for n in ("checkpoint_final.pth", "debug.json", "progress.png", "validation/summary.json", *extra_fold)}
    out |= {f"{m}/crossval_results_folds_0_1/{n}" for n in ("summary.json", "postprocessing.pkl", "postprocessing.json", *extra_cv)}
    return out


def _files_in(zip_path: Path) -> set[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return {n for n in zf.namelist() if not n.endswith("/")}


def test_entry_list_matches_nnunet_layout(results: Path, tmp_path: Path) -> None:
    out = export_model_zip(results, DS, tmp_path / "out" / "m.zip", folds=(0, 1))
    assert out.configurations == ["3d_fullres", "2d"]
    assert len(out.skipped) == 2 and "3d_lowres" in out.skipped[0]
    ens = {f"{DS}/ensembles/{ENS}/{n}" for n in ("summary.json", "postprocessing.pkl", "postprocessing.json")}
    dataset_files = {f"{DS}/inference_information.json", f"{DS}/inference_instructions.txt"}
    expected = _model_entries("3d_fullres") | _model_entries("2d") | ens | dataset_files
    assert _files_in(out.output_zip) == expected
    assert set(out.entries) == expected
    with zipfile.ZipFile(out.output_zip) as zf:
        assert f"{DS}/" in zf.namelist() and all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist() if i.file_size)


def test_crossval_predictions_and_info_without_ensembles(results: Path, tmp_path: Path) -> None:
    shutil.rmtree(results / DS / "ensembles")
    out = export_model_zip(results, DS, tmp_path / "m.zip", configurations=["3d_fullres", "3d_fullres"], folds=["0", 0],
                           checkpoints=["checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_final.pth"],
                           export_crossval_predictions=True)  # repeated names are exported once (no duplicate entries)
    m = f"{DS}/nnUNetTrainer__nnUNetPlans__3d_fullres"
    expected = _model_entries("3d_fullres", folds=(0,), extra_fold=("checkpoint_best.pth", "validation/c1.nii.gz"),
                              extra_cv=("c1.nii.gz",))
    # nnU-Net returns before exporting these when ensembles/ is missing; nnseg exports them whenever they exist
    expected |= {f"{DS}/inference_information.json", f"{DS}/inference_instructions.txt"}
    assert _files_in(out.output_zip) == expected
    assert f"{m}/fold_0/validation/c1.npz" not in expected


def test_install_round_trip_weights_identical(results: Path, tmp_path: Path) -> None:
    zip_path = export_model_zip(results, DS, tmp_path / "m.zip", configurations=["3d_fullres"], folds=(0, 1)).output_zip
    fresh = tmp_path / "fresh_results"
    installed = install_model_zip(zip_path, fresh)
    assert installed == [fresh / DS / "nnUNetTrainer__nnUNetPlans__3d_fullres"]
    for k in (0, 1):
        rel = Path(DS, "nnUNetTrainer__nnUNetPlans__3d_fullres", f"fold_{k}", "checkpoint_final.pth")
        assert (fresh / rel).read_bytes() == (results / rel).read_bytes()
        ckpt = load_checkpoint(fresh / rel)
        plans = json.loads((installed[0] / "plans.json").read_text())
        net = build_network(plans["configurations"]["3d_fullres"]["architecture"], input_channels=1, num_classes=2)
        net.load_state_dict(network_state_dict(ckpt), strict=True)
        reference = _checkpoint(k)["network_weights"]
        assert all(torch.equal(net.state_dict()[n], reference[n]) for n in reference)


def test_strip_optimizer_is_smaller_and_loads(results: Path, tmp_path: Path) -> None:
    full = export_model_zip(results, DS, tmp_path / "full.zip", configurations=["3d_fullres"], folds=[0])
    slim = export_model_zip(results, DS, tmp_path / "slim.zip", configurations=["3d_fullres"], folds=[0],
                            strip_optimizer=True)
    assert _files_in(slim.output_zip) == _files_in(full.output_zip)
    name = f"{DS}/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    with zipfile.ZipFile(full.output_zip) as a, zipfile.ZipFile(slim.output_zip) as b:
        assert b.getinfo(name).file_size < 0.75 * a.getinfo(name).file_size
    fresh = tmp_path / "fresh"
    install_model_zip(slim.output_zip, fresh)
    ckpt = load_checkpoint(fresh / name)
    original = _checkpoint(0)
    assert ckpt["optimizer_state"] is None
    assert set(ckpt) == set(original)
    assert ckpt["logging"] == original["logging"] and ckpt["init_args"] == original["init_args"]
    assert all(torch.equal(ckpt["network_weights"][n], v) for n, v in original["network_weights"].items())


def test_missing_fold_and_checkpoint_errors(results: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.zip"
    with pytest.raises(FileNotFoundError, match=r"fold_2 does not exist \(folds present: fold_0, fold_1\)"):
        export_model_zip(results, DS, target, configurations=["3d_fullres"], folds=(0, 1, 2))
    with pytest.raises(FileNotFoundError, match=r"lacks checkpoint_latest.pth \(checkpoints present: checkpoint_best.pth, checkpoint_final.pth\)"):
        export_model_zip(results, DS, target, configurations=["3d_fullres"], folds=(0,), checkpoints=["checkpoint_latest.pth"])
    with pytest.raises(FileNotFoundError, match="Model folders present: nnUNetTrainer__nnUNetPlans__2d"):
        export_model_zip(results, DS, target, configurations=["3d_lowres"], folds=(0,))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model_zip(results, "Dataset043_Missing", target)
    assert not target.exists()
    out = export_model_zip(results, DS, target, configurations=["3d_fullres"], folds=(0, 1, 2), strict=False)
    assert any("fold_2" in s for s in out.skipped)
    assert {n.split("/")[2] for n in out.entries if n.count("/") >= 3} == {"fold_0", "fold_1", "crossval_results_folds_0_1"}


def test_failed_write_leaves_nothing(results: Path, tmp_path: Path) -> None:
    ckpt = results / DS / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        export_model_zip(results, DS, tmp_path / "m.zip", configurations=["3d_fullres"], folds=[0], strip_optimizer=True)
    assert list(tmp_path.glob("*m.zip*")) == []


def test_parse_ensemble_name() -> None:
    assert parse_ensemble_name(ENS) == ["nnUNetTrainer__nnUNetPlans__2d", "nnUNetTrainer__nnUNetPlans__3d_fullres"]
    assert parse_ensemble_name("something_else") is None


def test_cli_export_model(results: Path, tmp_path: Path, roots_env: dict[str, str], capsys) -> None:
    env = dict(roots_env, nnUNet_results=str(results))
    rc = main(["export-model", "-d", "42", "-o", str(tmp_path / "cli.zip"), "-c", "2d", "-f", "0", "1",
               "--strip_optimizer"], env=env, cwd=tmp_path)
    assert rc == 0
    assert _files_in(tmp_path / "cli.zip") == _model_entries("2d") | {f"{DS}/inference_information.json",
                                                                      f"{DS}/inference_instructions.txt"}
    assert "cli.zip" in capsys.readouterr().out
    rc = main(["export-model", "-d", "42", "-o", str(tmp_path / "bad.zip"), "-c", "2d", "-f", "0", "7"], env=env, cwd=tmp_path)
    assert rc == 1 and "fold_7 does not exist" in capsys.readouterr().err
    rc = main(["export-model", "-d", "42", "-o", str(tmp_path / "ns.zip"), "-c", "2d", "-f", "0", "7", "--not_strict"],
              env=env, cwd=tmp_path)
    assert rc == 0 and "skipped" in capsys.readouterr().out


def test_golden_nnunet_zip_reexports_identically(expected_dir: Path, tmp_path: Path) -> None:
    golden = expected_dir / "Dataset004_Hippocampus" / "model" / "model.zip"
    results = tmp_path / "results"
    install_model_zip(golden, results)
    out = export_model_zip(results, "Dataset004_Hippocampus", tmp_path / "again.zip", configurations=["3d_fullres_bs2"],
                           trainer="nnUNetTrainer_bench", folds=[0])
    with zipfile.ZipFile(golden) as a, zipfile.ZipFile(out.output_zip) as b:
        assert b.namelist() == a.namelist()
        for name in a.namelist():
            assert b.read(name) == a.read(name), name


@pytest.mark.slow
def test_export_install_predict_identical(expected_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    """Acceptance: nnU-Net's model -> export (optimizer stripped) -> install elsewhere -> identical predictions."""
    from nnseg.predictions.run.predict import predict_arrays
    from nnseg.raw.image_io import read_images

    model = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2"
    install_model_zip(expected_dir / "Dataset004_Hippocampus" / "model" / "model.zip", tmp_path / "a")
    out = export_model_zip(tmp_path / "a", "Dataset004_Hippocampus", tmp_path / "m.zip", configurations=["3d_fullres_bs2"],
                           trainer="nnUNetTrainer_bench", folds=[0], strip_optimizer=True)
    install_model_zip(out.output_zip, tmp_path / "b")
    case = (expected_dir / "Dataset004_Hippocampus" / "model" / "cases.txt").read_text().split()[0]
    image, geometry = read_images([shared_data / "Task04_Hippocampus" / "imagesTr" / f"{case}.nii.gz"], "SimpleITKIO")
    kw = {"folds": (0,), "use_tta": False, "device": "cpu", "precision": "fp32", "return_probabilities": True}
    (seg_a, prob_a), = predict_arrays(tmp_path / "a" / model, [image], [geometry], **kw)
    (seg_b, prob_b), = predict_arrays(tmp_path / "b" / model, [image], [geometry], **kw)
    assert np.array_equal(seg_a, seg_b) and np.array_equal(prob_a, prob_b)
    assert seg_a.max() == 2
