"""The VRAM proxy from the planners' names equals the one through the registries, and the planner skips torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nnseg.networks import build_network, memory

BLOCKS = "dynamic_network_architectures.building_blocks.residual."


def _arch(name: str, dim: int, **kw: object) -> dict:
    base = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": [[3] * dim] * 3, "strides": [[1] * dim, [2] * dim, [2] * dim],
            "n_conv_per_stage_decoder": [1, 2], "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    base.update(kw)
    return {"network_class_name": f"dynamic_network_architectures.architectures.unet.{name}", "arch_kwargs": base,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch_kw", [
    {"name": "PlainConvUNet", "n_conv_per_stage": [2, 2, 2]},
    {"name": "ResidualEncoderUNet", "n_blocks_per_stage": [1, 2, 2]},
    {"name": "ResidualEncoderUNet", "n_blocks_per_stage": [1, 2, 2], "block": BLOCKS + "BottleneckD",
     "bottleneck_channels": [4, 8, 16], "stem_channels": 6},
    {"name": "ResidualEncoderUNet", "n_blocks_per_stage": [2, 1, 1], "block": BLOCKS + "BasicBlockD"},
])
def test_by_name_equals_resolved(dim: int, arch_kw: dict) -> None:
    kw = dict(arch_kw)
    arch = _arch(kw.pop("name"), dim, **kw)
    assert memory._by_name(arch) is not None  # estimated without the registries (no torch)
    patch = [32, 24, 16][:dim]
    for ds in (True, False):
        net = build_network(arch, input_channels=1, num_classes=3, deep_supervision=ds)
        expected = net.compute_conv_feature_map_size(patch)
        assert memory.estimate_feature_map_size(arch, patch, input_channels=1, num_classes=3, deep_supervision=ds) \
            == expected


def test_unknown_names_go_through_the_registries() -> None:
    arch = _arch("PlainConvUNet", 3, n_conv_per_stage=[2, 2, 2], conv_op="torch.nn.Conv3d")
    assert memory._by_name(arch) is None  # an alias the registries resolve, not a planner name
    assert memory._by_name({**arch, "network_class_name": "my.custom.Net"}) is None


def test_planner_import_leaves_torch_out() -> None:
    code = "import sys, nnseg.plans.planner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
