"""NetworkSummary: network_architecture.txt at training start, the PDF only through an optional graph library."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnseg.networks import build_network, count_parameters
from nnseg.training import summary_hook
from nnseg.training.summary_hook import (
    PDF_NAME,
    TEXT_NAME,
    NetworkSummary,
    architecture_text,
)

ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                    "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
                    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
PATCH = (32, 48)


@pytest.fixture
def net() -> nn.Module:
    return build_network(json.loads(json.dumps(ARCH)), input_channels=2, num_classes=3)


@pytest.fixture
def run() -> SimpleNamespace:
    return SimpleNamespace(patch_size=PATCH, num_input_channels=2, trainer_name="nnUNetTrainer_5epochs")


@pytest.fixture
def no_graph_library(monkeypatch: pytest.MonkeyPatch) -> None:
    real = summary_hook.importlib.util.find_spec
    monkeypatch.setattr(summary_hook.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torchview", "graphviz") else real(name, *a))


def _fake_torchview(monkeypatch: pytest.MonkeyPatch, draw) -> None:  # type: ignore[no-untyped-def]
    module = types.ModuleType("torchview")
    module.__spec__ = importlib.machinery.ModuleSpec("torchview", None)
    module.draw_graph = draw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchview", module)


def test_text_has_stages_feature_maps_layers_and_parameter_count(tmp_path: Path, net: nn.Module, run: SimpleNamespace,
                                                                  no_graph_library: None) -> None:
    NetworkSummary(tmp_path / "fold_0").on_train_start(run, None, net)
    text = (tmp_path / "fold_0" / TEXT_NAME).read_text()
    assert f"parameters: {count_parameters(net):,}" in text
    assert "input: 2 channel(s) x 32 x 48" in text
    assert "encoder 2" in text and "8x12" in text  # deepest stage: 32x48 / 4
    assert "decoder.seg_layers.1" in text and "Conv2d" in text
    assert "install torchview or graphviz" in text
    assert not (tmp_path / "fold_0" / PDF_NAME).exists()


def test_compiled_wrapper_is_looked_through(tmp_path: Path, net: nn.Module, run: SimpleNamespace,
                                            no_graph_library: None) -> None:
    wrapper = nn.Module()
    wrapper._orig_mod = net  # what torch.compile's OptimizedModule holds
    assert architecture_text(wrapper, PATCH, input_channels=2) == architecture_text(net, PATCH, input_channels=2)


def test_any_network_gets_a_layer_table(net: nn.Module, no_graph_library: None) -> None:
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    text = architecture_text(other, (16, 16), input_channels=1)
    assert "no per-stage table for Sequential" in text and "parameters: 40 " in text and "ReLU" in text


def test_pdf_through_torchview_when_installed(tmp_path: Path, net: nn.Module, run: SimpleNamespace,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def draw_graph(model, *, input_size, device, depth):  # type: ignore[no-untyped-def]
        calls.append((model, input_size, device))
        return SimpleNamespace(visual_graph=SimpleNamespace(pipe=lambda format: b"%PDF-1.4 " + format.encode()))

    _fake_torchview(monkeypatch, draw_graph)
    NetworkSummary(tmp_path).on_train_start(run, None, net)
    assert (tmp_path / PDF_NAME).read_bytes() == b"%PDF-1.4 pdf"
    assert calls == [(net, (1, 2, *PATCH), torch.device("cpu"))]
    assert "no network_architecture.pdf" not in (tmp_path / TEXT_NAME).read_text()


def test_failing_graph_library_does_not_stop_training(tmp_path: Path, net: nn.Module, run: SimpleNamespace,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def draw_graph(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("dot not found on PATH")

    _fake_torchview(monkeypatch, draw_graph)
    NetworkSummary(tmp_path).on_train_start(run, None, net)
    assert not (tmp_path / PDF_NAME).exists()
    assert "graph library failed: RuntimeError: dot not found on PATH" in (tmp_path / TEXT_NAME).read_text()
    assert not list(tmp_path.glob(".*tmp*"))


def test_written_when_a_training_run_starts(tiny_preprocessed: Path, tmp_path: Path, no_graph_library: None) -> None:
    from tinydata import tiny_plans, tiny_spec

    from nnseg.training.config import TrainConfig
    from nnseg.training.loop import train
    from nnseg.training.setup import FoldJob, make_run_spec

    config = TrainConfig(num_epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1, seed=0)
    job = FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=tiny_spec(),
                  preprocessed_dataset_folder=tiny_preprocessed, results_dataset_folder=tmp_path / "results", fold=0,
                  trainer_name="nnUNetTrainer", config=config, device=torch.device("cpu"), precision="fp32")
    run = make_run_spec(job)
    train(run, hooks=NetworkSummary(run.output_folder))
    text = (run.output_folder / TEXT_NAME).read_text()
    assert text.startswith(f"nnUNetTrainer: {run.output_folder}") and "input: 1 channel(s) x 16 x 16 x 16" in text
    assert "encoder 0" in text and "decoder 0" in text and "layers:" in text


def test_every_training_run_gets_the_hook(tmp_path: Path) -> None:
    from nnseg.launch.hooks import standard_hooks
    from nnseg.training.distributed import DistInfo

    run = type("Run", (), {"output_folder": tmp_path})()
    assert any(isinstance(h, NetworkSummary) for h in standard_hooks(run).hooks)  # type: ignore[arg-type]
    assert not any(isinstance(h, NetworkSummary) for h in standard_hooks(run, info=DistInfo(1, 2)).hooks)  # type: ignore[arg-type]
