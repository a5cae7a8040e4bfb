"""Unit tests of nnseg.networks on tiny synthetic architectures (fast, CPU)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnseg.networks import (
    NETWORKS,
    PlainConvUNet,
    ResidualEncoderUNet,
    build_network,
    count_parameters,
    estimate_feature_map_size,
    network_summary,
    set_deep_supervision,
)
from nnseg.networks.memory import _estimate_cached
from nnseg.networks.residual import BasicBlockD, BottleneckD

IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def plain_arch(dim: int = 3, **overrides: object) -> dict:
    kw = {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": [[3] * dim] * 3,
        "strides": [[1] * dim, [2] * dim, [2] * dim],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    kw.update(overrides)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": kw,
        "_kw_requires_import": IMPORTS,
    }


def resenc_arch(dim: int = 3, **overrides: object) -> dict:
    arch = plain_arch(dim)
    kw = arch["arch_kwargs"]
    kw.pop("n_conv_per_stage")
    kw.update(n_blocks_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 1])
    kw.update(overrides)
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    return arch


def _estimate(arch: dict, patch: list[int], **kw: object) -> int:
    return estimate_feature_map_size(arch, patch, input_channels=2, num_classes=3, **kw)


# ----------------------------------------------------------------------------------------- building


def test_build_from_dataset004_plans(expected_dir: Path) -> None:
    plans = json.loads((expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text())
    for name in ("2d", "3d_fullres"):
        config = plans["configurations"][name]
        net = build_network(config["architecture"], input_channels=1, num_classes=3, deep_supervision=True)
        assert isinstance(net, PlainConvUNet)
        patch = config["patch_size"]
        expected = net.compute_conv_feature_map_size(patch)
        assert estimate_feature_map_size(config["architecture"], patch, input_channels=1, num_classes=3) == expected
        small = [16] * len(patch)
        net.eval()
        with torch.no_grad():
            outputs = net(torch.zeros(1, 1, *small))
        assert [tuple(o.shape) for o in outputs] == [(1, 3, *[s // f for s in small]) for f in (1, 2, 4)]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("make", [plain_arch, resenc_arch])
def test_deep_supervision_on_and_off(dim: int, make: object) -> None:
    arch = make(dim)  # type: ignore[operator]
    patch = [16] * dim
    x = torch.randn(2, 2, *patch)
    on = build_network(arch, input_channels=2, num_classes=3, deep_supervision=True)
    off = build_network(arch, input_channels=2, num_classes=3, deep_supervision=False)
    off.load_state_dict(on.state_dict(), strict=True)
    on.eval(), off.eval()
    with torch.no_grad():
        outs, single = on(x), off(x)
    assert isinstance(outs, list) and len(outs) == 2
    assert [tuple(o.shape) for o in outs] == [(2, 3, *[16] * dim), (2, 3, *[8] * dim)]
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, outs[0])
    for ds, net in ((True, on), (False, off)):
        assert net.compute_conv_feature_map_size(patch) == _estimate(arch, patch, deep_supervision=ds)
    assert _estimate(arch, patch, deep_supervision=True) > _estimate(arch, patch, deep_supervision=False)


def test_registry_names() -> None:
    assert NETWORKS["PlainConvUNet"] is PlainConvUNet
    assert NETWORKS["dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"] is ResidualEncoderUNet


def test_unknown_class_refused_with_known_names() -> None:
    arch = plain_arch()
    arch["network_class_name"] = "some.module.MyFancyNet"
    with pytest.raises(ValueError, match="MyFancyNet") as info:
        build_network(arch, input_channels=1, num_classes=2)
    assert "dynamic_network_architectures.architectures.unet.PlainConvUNet" in str(info.value)
    with pytest.raises(ValueError, match="MyFancyNet"):
        _estimate(arch, [16, 16, 16])


@pytest.mark.parametrize(
    ("key", "value"),
    [("conv_op", "os.system"), ("nonlin", "builtins.eval"), ("norm_op", "torch.nn.GroupNorm"), ("conv_op", 3)],
)
def test_unknown_dotted_names_refused(key: str, value: object) -> None:
    arch = plain_arch()
    arch["arch_kwargs"][key] = value
    with pytest.raises(ValueError, match=key):
        build_network(arch, input_channels=1, num_classes=2)


def test_bad_kwargs_refused() -> None:
    arch = plain_arch(frobnicate=1)
    with pytest.raises(ValueError, match="frobnicate"):
        build_network(arch, input_channels=1, num_classes=2)
    arch = plain_arch()
    del arch["arch_kwargs"]["strides"]
    with pytest.raises(ValueError, match="strides"):
        build_network(arch, input_channels=1, num_classes=2)
    arch = plain_arch()
    arch["_kw_requires_import"] = [*IMPORTS, "n_stages"]
    with pytest.raises(ValueError, match="n_stages"):
        build_network(arch, input_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="n_conv_per_stage"):
        build_network(plain_arch(n_conv_per_stage=[2, 2]), input_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="network_class_name"):
        build_network({"arch_kwargs": {}}, input_channels=1, num_classes=2)


def test_scalar_arguments_are_expanded() -> None:
    arch = plain_arch(2, features_per_stage=6, kernel_sizes=3, strides=[1, 2, 2], n_conv_per_stage=1,
                      n_conv_per_stage_decoder=1)
    net = build_network(arch, input_channels=2, num_classes=3)
    assert net.encoder.output_channels == [6, 6, 6]
    assert net.encoder.strides == [[1, 1], [2, 2], [2, 2]]
    assert net.compute_conv_feature_map_size([16, 16]) == _estimate(arch, [16, 16])


def test_patch_dimension_mismatch_raises() -> None:
    net = build_network(plain_arch(3), input_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="3D"):
        net.compute_conv_feature_map_size([16, 16])
    with pytest.raises(ValueError, match="3D"):
        _estimate(plain_arch(3), [16, 16])


def test_anisotropic_kernels_and_strides() -> None:
    arch = plain_arch(3, kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    net = build_network(arch, input_channels=2, num_classes=3)
    assert net.encoder.stages[0][0].convs[0].conv.padding == (0, 1, 1)
    assert tuple(net.decoder.transpconvs[1].stride) == (1, 2, 2)
    with torch.no_grad():
        outs = net(torch.randn(1, 2, 4, 16, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(4, 16, 16), (4, 8, 8)]
    assert net.compute_conv_feature_map_size([4, 16, 16]) == _estimate(arch, [4, 16, 16])


# ------------------------------------------------------------------------------------- options


def test_nonlin_first_swaps_norm_and_nonlin() -> None:
    net = build_network(plain_arch(2, nonlin_first=True), input_channels=1, num_classes=2)
    seq = net.encoder.stages[0][0].convs[0].all_modules
    assert [type(m) for m in seq] == [nn.Conv2d, nn.LeakyReLU, nn.InstanceNorm2d]
    assert [type(m) for m in net.decoder.stages[0].convs[0].all_modules][1] is nn.LeakyReLU


def test_dropout_and_batchnorm_layout() -> None:
    arch = plain_arch(2, dropout_op="torch.nn.Dropout2d", dropout_op_kwargs={"p": 0.2},
                      norm_op="torch.nn.BatchNorm2d", nonlin="torch.nn.ReLU")
    net = build_network(arch, input_channels=1, num_classes=2)
    conv = net.encoder.stages[0][0].convs[0]
    assert [type(m) for m in conv.all_modules] == [nn.Conv2d, nn.Dropout2d, nn.BatchNorm2d, nn.ReLU]
    keys = list(net.state_dict())
    assert keys[:7] == [f"encoder.stages.0.0.convs.0.{k}" for k in (
        "conv.weight", "conv.bias", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
        "norm.num_batches_tracked")]
    assert "encoder.stages.0.0.convs.0.all_modules.2.running_mean" in keys


def test_resenc_stem_channels_and_bottleneck_blocks() -> None:
    arch = resenc_arch(3, stem_channels=6, block="BottleneckD", bottleneck_channels=[2, 4, 4])
    net = build_network(arch, input_channels=2, num_classes=3)
    assert net.encoder.stem.output_channels == 6
    assert all(isinstance(b, BottleneckD) for stage in net.encoder.stages for b in stage.blocks)
    for patch in ([16, 16, 16], [8, 16, 24]):
        assert net.compute_conv_feature_map_size(patch) == _estimate(arch, patch)
    with torch.no_grad():
        outs = net(torch.randn(1, 2, 16, 16, 16))
    assert tuple(outs[0].shape) == (1, 3, 16, 16, 16)
    for stage in net.encoder.stages:
        for blk in stage.blocks:
            assert torch.all(blk.conv3.norm.weight == 0) and torch.all(blk.conv3.norm.bias == 0)
    with pytest.raises(ValueError, match="bottleneck_channels"):
        build_network(resenc_arch(3, block="BottleneckD"), input_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="block"):
        build_network(resenc_arch(3, block="ResNeXtBlock"), input_channels=1, num_classes=2)


# -------------------------------------------------------------------------------------- init


def test_he_initialisation_statistics() -> None:
    torch.manual_seed(0)
    arch = plain_arch(3, features_per_stage=[32, 64, 64])
    net = build_network(arch, input_channels=4, num_classes=3)
    gain = math.sqrt(2.0 / (1 + 1e-2**2))
    conv = net.encoder.stages[2][0].convs[1].conv  # 64 x 64 x 3x3x3
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(gain / math.sqrt(fan_in), rel=0.03)
    assert conv.weight.mean().item() == pytest.approx(0, abs=0.01 * gain / math.sqrt(fan_in) * 10)
    up = net.decoder.transpconvs[0]
    assert up.weight.std().item() == pytest.approx(gain / math.sqrt(up.weight[0].numel()), rel=0.05)
    for module in net.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            assert torch.all(module.bias == 0)
        if isinstance(module, nn.InstanceNorm3d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_resenc_last_norm_before_addition_zeroed() -> None:
    net = build_network(resenc_arch(2), input_channels=1, num_classes=2)
    blocks = [b for stage in net.encoder.stages for b in stage.blocks]
    assert len(blocks) == 5 and all(isinstance(b, BasicBlockD) for b in blocks)
    for blk in blocks:
        assert torch.all(blk.conv2.norm.weight == 0) and torch.all(blk.conv2.norm.bias == 0)
        assert torch.all(blk.conv1.norm.weight == 1)
    assert torch.all(net.encoder.stem.convs[0].norm.weight == 1)
    no_init = build_network(resenc_arch(2), input_channels=1, num_classes=2, initialize=False)
    assert torch.all(no_init.encoder.stages[0].blocks[0].conv2.norm.weight == 1)


# ------------------------------------------------------------------------- estimate & helpers


def test_estimate_is_cached_and_leaves_input_untouched() -> None:
    arch = plain_arch(3)
    before = copy.deepcopy(arch)
    _estimate_cached.cache_clear()
    first = _estimate(arch, [16, 16, 16])
    second = _estimate(arch, (16, 16, 16))
    assert first == second and _estimate_cached.cache_info().hits == 1
    assert arch == before
    with pytest.raises(ValueError, match="num_classes"):
        estimate_feature_map_size(arch, [16, 16, 16], input_channels=1, num_classes=0)


def test_estimate_hand_computed_plain_2d() -> None:
    arch = plain_arch(2, features_per_stage=[4, 8, 16], n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2])
    # encoder: 2*4*16*16 + 2*8*8*8 + 2*16*4*4; decoder stage0 at 8x8 (8 ch): 2 convs + transp + seg(3);
    # stage1 at 16x16 (4 ch): 2 convs + transp + seg(3)
    encoder = 2 * 4 * 256 + 2 * 8 * 64 + 2 * 16 * 16
    decoder = 3 * 8 * 64 + 3 * 64 + 3 * 4 * 256 + 3 * 256
    assert _estimate(arch, [16, 16]) == encoder + decoder
    assert _estimate(arch, [16, 16], deep_supervision=False) == encoder + decoder - 3 * 64


def test_count_parameters_and_summary() -> None:
    net = build_network(resenc_arch(2), input_channels=1, num_classes=2)
    distinct = {id(p): p.numel() for p in net.parameters()}
    assert count_parameters(net) == sum(distinct.values())
    net.decoder.seg_layers.requires_grad_(False)
    frozen = sum(p.numel() for p in net.decoder.seg_layers.parameters())
    assert count_parameters(net, trainable_only=True) == count_parameters(net) - frozen
    text = network_summary(net, [32, 32])
    assert "stem" in text and "encoder 2" in text and "decoder 1" in text
    assert f"{count_parameters(net):,} parameters" in text
    assert f"{net.compute_conv_feature_map_size([32, 32]):,}" in text
    with pytest.raises(ValueError, match="encoder"):
        network_summary(nn.Linear(2, 2), [4, 4])


def test_numpy_values_in_architecture() -> None:
    arch = plain_arch(3)
    expected = _estimate(arch, [16, 16, 16])
    kw = arch["arch_kwargs"]
    kw["n_stages"] = np.int64(3)
    kw["strides"] = np.array(kw["strides"])
    kw["n_conv_per_stage"] = np.int64(2)
    assert _estimate(arch, np.array([16, 16, 16])) == expected
    net = build_network(arch, input_channels=2, num_classes=3)
    assert net.compute_conv_feature_map_size([16, 16, 16]) == expected


@pytest.mark.parametrize("make", [plain_arch, resenc_arch])
def test_training_step_backward_and_toggle(make: object) -> None:
    net = build_network(make(2), input_channels=2, num_classes=3)  # type: ignore[operator]
    outs = net(torch.randn(2, 2, 16, 16))
    sum(o.square().mean() for o in outs).backward()
    first = next(net.parameters())
    assert first.grad is not None and torch.isfinite(first.grad).all()
    set_deep_supervision(net, False)
    assert isinstance(net(torch.randn(1, 2, 16, 16)), torch.Tensor)
    with pytest.raises(ValueError, match="decoder"):
        set_deep_supervision(nn.Linear(1, 1), True)
