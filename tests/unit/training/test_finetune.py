"""Fine-tuning across label sets and input channels: what is loaded, mapped, re-initialised, and the report."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from tinydata import tiny_plans, tiny_spec

from nnseg.jsonio import load_json
from nnseg.networks import build_network
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.config import TrainConfig
from nnseg.training.finetune import REPORT_FILE, TargetInfo, load_pretrained
from nnseg.training.loop import train
from nnseg.training.pretrained import choose_zip_member, read_pretrained
from nnseg.training.setup import FoldJob, make_run_spec

ARCH = dict(tiny_plans().configuration("3d_fullres").architecture)
INPUT = "encoder.stages.0.0.convs.0.conv.weight"


def _labels(n: int) -> dict[str, int]:
    return {"background": 0, **{f"structure_{i}": i for i in range(1, n)}}


def _spec(channels: list[str], n_labels: int) -> dict[str, object]:
    return {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": _labels(n_labels),
            "numTraining": 6, "file_ending": ".nii.gz"}


def _pretrained(path: Path, channels: list[str], n_labels: int, *, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = build_network(ARCH, input_channels=len(channels), num_classes=n_labels, deep_supervision=True)
    weights = net.state_dict()
    torch.save({"network_weights": weights, "init_args": {"dataset_json": _spec(channels, n_labels)}}, path)
    return weights


def _target(channels: list[str], n_labels: int, rule: str = "mean") -> tuple[torch.nn.Module, TargetInfo]:
    torch.manual_seed(11)
    net = build_network(ARCH, input_channels=len(channels), num_classes=n_labels, deep_supervision=True)
    return net, TargetInfo.from_dataset_json(_spec(channels, n_labels), new_channels=rule)


def test_19_to_29_classes_loads_the_body_and_reinitialises_the_heads(tmp_path: Path) -> None:
    source = _pretrained(tmp_path / "src.pth", ["CT"], 20)  # background + 19 structures
    net, target = _target(["CT"], 30)  # background + 29
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_pretrained(net, read_pretrained(tmp_path / "src.pth"), target, path=tmp_path / "src.pth",
                             report_folder=tmp_path / "fold")
    after = net.state_dict()
    for key, value in after.items():
        if ".seg_layers." in key:
            assert value.shape[0] == 30 and torch.equal(value, fresh[key])  # fresh head, not the source's
        else:
            assert torch.equal(value, source[key]), key
    saved = load_json(tmp_path / "fold" / REPORT_FILE)
    heads = {e["name"]: e for e in saved["reinitialised"]}
    assert set(heads) == {k for k in after if ".seg_layers." in k}
    weight = heads["decoder.seg_layers.0.weight"]
    assert weight["shape"][0] == 30 and weight["source_shape"][0] == 20 and weight["why"] == "label set differs"
    assert saved["counts"]["loaded"] == len(after) - len(heads) == len(report.loaded)
    assert saved["counts"]["skipped"] == 0 and not saved["mapped"]


def test_same_labels_load_the_heads_too(tmp_path: Path) -> None:
    source = _pretrained(tmp_path / "src.pth", ["CT"], 3)
    net, target = _target(["CT"], 3)
    load_pretrained(net, read_pretrained(tmp_path / "src.pth"), target, path=tmp_path / "src.pth", report_folder=None)
    assert all(torch.equal(v, source[k]) for k, v in net.state_dict().items())


def test_1_to_2_channels_copies_by_name_and_initialises_the_new_one_as_the_mean(tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture[str]
                                                                                 ) -> None:
    source = _pretrained(tmp_path / "src.pth", ["T2"], 2)
    net, target = _target(["ADC", "T2"], 2)
    load_pretrained(net, read_pretrained(tmp_path / "src.pth"), target, path=tmp_path / "src.pth",
                    report_folder=tmp_path / "fold")
    weight = net.state_dict()[INPUT]
    assert weight.shape[1] == 2
    torch.testing.assert_close(weight[:, 1], source[INPUT][:, 0])  # T2 found by name
    torch.testing.assert_close(weight[:, 0], source[INPUT].mean(1))  # ADC is new: the mean of the pretrained
    saved = load_json(tmp_path / "fold" / REPORT_FILE)
    assert {e["name"] for e in saved["mapped"]} >= {INPUT} and saved["mapped"][0]["source_shape"][1] == 1
    assert any("'T2': copied from pretrained channel 0" in c for c in saved["channels"])
    assert "channel-mapped" in capsys.readouterr().err  # the report is printed too
    body = [k for k in source if ".seg_layers." not in k and source[k].shape == net.state_dict()[k].shape]
    assert all(torch.equal(net.state_dict()[k], source[k]) for k in body)


def test_reordered_channels_and_zero_rule(tmp_path: Path) -> None:
    source = _pretrained(tmp_path / "src.pth", ["T2", "ADC"], 2)
    net, target = _target(["adc", "T2", "DWI"], 2, rule="zero")
    load_pretrained(net, read_pretrained(tmp_path / "src.pth"), target, path=tmp_path / "src.pth", report_folder=None)
    weight = net.state_dict()[INPUT]
    assert torch.equal(weight[:, 0], source[INPUT][:, 1]) and torch.equal(weight[:, 1], source[INPUT][:, 0])
    assert torch.count_nonzero(weight[:, 2]) == 0


def test_model_zip_is_a_source(tmp_path: Path) -> None:
    source = _pretrained(tmp_path / "src.pth", ["CT"], 20)
    model = "Dataset001_Src/nnUNetTrainer__nnUNetPlans__3d_fullres"
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tmp_path / "src.pth", f"{model}/fold_1/checkpoint_final.pth")
        zf.write(tmp_path / "src.pth", f"{model}/fold_0/checkpoint_best.pth")
        zf.writestr(f"{model}/dataset.json", '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}}')
    read = read_pretrained(archive)
    assert read.where.endswith(f"{model}/fold_1/checkpoint_final.pth") and read.labels == {"background": 0, "a": 1}
    assert all(torch.equal(read.weights[k], v) for k, v in source.items())
    assert choose_zip_member([f"{model}/fold_all/checkpoint_final.pth", f"{model}/fold_3/checkpoint_final.pth"]) \
        .endswith("fold_3/checkpoint_final.pth")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no model")
    with pytest.raises(ValueError, match=f"-pretrained_weights {empty}: the zip holds no"):
        read_pretrained(empty)


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.save({"network_weights": {INPUT: torch.zeros(3, 3)}}, tmp_path / "other.pth")
    net, target = _target(["CT"], 2)
    with pytest.raises(ValueError, match="do not fit this network"):
        load_pretrained(net, read_pretrained(tmp_path / "other.pth"), target, path=tmp_path / "other.pth",
                        report_folder=None)


def test_training_run_fine_tunes_19_to_29_classes_with_the_report(tiny_preprocessed: Path, tmp_path: Path) -> None:
    source = _pretrained(tmp_path / "src.pth", ["MRI"], 20)
    spec = DatasetSpec.from_json({**tiny_spec().to_json(), "labels": _labels(30)})
    config = TrainConfig(num_epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1, seed=0, initial_lr=0.0)
    job = FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=spec, preprocessed_dataset_folder=tiny_preprocessed,
                  results_dataset_folder=tmp_path / "res", fold=0, trainer_name="nnUNetTrainer", config=config,
                  device=torch.device("cpu"), precision="fp32")
    run = make_run_spec(job, pretrained_weights=tmp_path / "src.pth")
    train(run, pretrained_weights=tmp_path / "src.pth")
    report = load_json(run.output_folder / REPORT_FILE)
    assert report["counts"]["reinitialised"] == 4 and report["counts"]["skipped"] == 0  # 2 heads x (weight, bias)
    final = load_checkpoint(run.output_folder / "checkpoint_final.pth")["network_weights"]
    assert final["decoder.seg_layers.0.weight"].shape[0] == 30
    torch.testing.assert_close(final[INPUT], source[INPUT])  # lr 0: the loaded body is unchanged
