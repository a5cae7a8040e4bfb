"""nnseg's U-Nets against dynamic-network-architectures 0.4.4 / nnU-Net v2 golden files.

Oracles: `reference/expected/networks/networks.json` (state-dict layout, parameter counts, memory
estimates), the `.npz` files (weights, input, outputs), and a real nnU-Net v2 checkpoint of Dataset004.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nnseg.networks import build_network, count_parameters, estimate_feature_map_size

pytestmark = pytest.mark.golden

_IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def _entries() -> list[dict]:
    from shared_paths import EXPECTED

    path = EXPECTED / "networks" / "networks.json"
    return json.loads(path.read_text()) if path.is_file() else []


ENTRIES = _entries()
STORED = [e for e in ENTRIES if "stored" in e]


def _arch(entry: dict) -> dict:
    return {
        "network_class_name": entry["network_class_name"],
        "arch_kwargs": entry["arch_kwargs"],
        "_kw_requires_import": _IMPORTS,
    }


def _build(entry: dict, *, meta: bool = False, deep_supervision: bool | None = None) -> torch.nn.Module:
    ds = entry["deep_supervision"] if deep_supervision is None else deep_supervision
    kwargs = dict(input_channels=entry["input_channels"], num_classes=entry["num_classes"], deep_supervision=ds)
    if meta:
        with torch.device("meta"):
            return build_network(_arch(entry), initialize=False, **kwargs)
    return build_network(_arch(entry), **kwargs)


def _ids(entries: list[dict]) -> list[str]:
    return [e["name"] for e in entries]


def test_golden_networks_present(expected_dir: Path) -> None:
    assert len(ENTRIES) >= 7 and len(STORED) >= 4


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_state_dict_layout_and_parameter_count(entry: dict, expected_dir: Path) -> None:
    net = _build(entry, meta=True)
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    assert ours == [tuple(x) for x in entry["state_dict"]]
    assert count_parameters(net) == entry["n_parameters"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_feature_map_size_matches(entry: dict, expected_dir: Path) -> None:
    net = _build(entry, meta=True)
    for patch_json, expected in entry["conv_feature_map_size"].items():
        patch = json.loads(patch_json)
        assert net.compute_conv_feature_map_size(patch) == expected, patch
        estimate = estimate_feature_map_size(
            _arch(entry), patch, input_channels=entry["input_channels"], num_classes=entry["num_classes"],
            deep_supervision=entry["deep_supervision"],
        )
        assert estimate == expected, patch


def _stored_state(entry: dict, expected_dir: Path) -> tuple[dict[str, torch.Tensor], np.lib.npyio.NpzFile]:
    data = np.load(expected_dir / "networks" / entry["stored"])
    weights = {k.removeprefix("weight::"): torch.from_numpy(data[k]) for k in data.files if k.startswith("weight::")}
    aliases = entry["aliases"]
    state = {k: weights[aliases.get(k, k)] for k, _, _ in entry["state_dict"]}
    return state, data


def _fp32_tolerance(net: torch.nn.Module, reference: np.ndarray) -> float:
    """How far two correct fp32 evaluations of ``net`` may differ, in the units of ``reference``.

    The stored outputs come from one CPU; another CPU (or oneDNN kernel: AVX2, AVX-512, AMX) sums each convolution
    in another order, which changes its result by a few units in the last place (ulp) of the activations' magnitude.
    Instance normalisation brings every stage back to unit scale, so these rounding errors add up along the layers
    instead of multiplying: about one ulp of the output's magnitude per convolution. Hence the tolerance
    4 * eps(float32) * (number of convolutions, an upper bound on the path length) * max|output|, 4 being headroom for
    errors of the same sign. Measured on AMD EPYC (Zen 5) for the four stored networks: our fp32 outputs differ from a
    float64 evaluation of the same weights by at most 0.21 of this tolerance, and the Intel AMX run of issue 23
    (1.27e-5 off in plain3d_tiny_aniso) used 0.19 of it; a wrong weight, alias or layer order moves the outputs by
    1e-2 or more, far outside it.
    """
    convs = sum(isinstance(m, (torch.nn.modules.conv._ConvNd)) for m in net.modules())
    return 4 * float(np.finfo(np.float32).eps) * convs * float(np.abs(reference).max())


@pytest.mark.parametrize("entry", STORED, ids=_ids(STORED))
def test_stored_weights_give_stored_outputs(entry: dict, expected_dir: Path) -> None:
    state, data = _stored_state(entry, expected_dir)
    net = _build(entry)
    net.load_state_dict(state, strict=True)
    net.eval()
    with torch.no_grad():
        outputs = net(torch.from_numpy(data["input"]))
    assert isinstance(outputs, list) and len(outputs) == entry["n_outputs"]
    for i, out in enumerate(outputs):
        reference = data[f"output_{i}"]
        np.testing.assert_allclose(out.numpy(), reference, atol=_fp32_tolerance(net, reference), rtol=0)
    net.decoder.deep_supervision = False
    with torch.no_grad():
        single = net(torch.from_numpy(data["input"]))
    assert isinstance(single, torch.Tensor)
    np.testing.assert_allclose(single.numpy(), data["output_0"], atol=_fp32_tolerance(net, data["output_0"]), rtol=0)


@pytest.mark.parametrize("entry", STORED, ids=_ids(STORED))
def test_aliases_share_storage(entry: dict, expected_dir: Path) -> None:
    state, _ = _stored_state(entry, expected_dir)
    net = _build(entry)
    net.load_state_dict(state, strict=True)
    ours = net.state_dict()
    for alias, key in entry["aliases"].items():
        assert ours[alias].data_ptr() == ours[key].data_ptr(), alias


def test_real_nnunet_checkpoint_loads_strict(expected_dir: Path) -> None:
    zpath = expected_dir / "Dataset004_Hippocampus" / "model" / "model.zip"
    base = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2/"
    with zipfile.ZipFile(zpath) as zf:
        plans = json.loads(zf.read(base + "plans.json"))
        raw = zf.read(base + "fold_0/checkpoint_final.pth")
    allowed = [np.dtype, np._core.multiarray.scalar, *{type(np.dtype(t)) for t in ("float32", "float64", "int64")}]
    with torch.serialization.safe_globals(allowed):
        checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    net = build_network(arch, input_channels=1, num_classes=3, deep_supervision=False)
    result = net.load_state_dict(checkpoint["network_weights"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(net.state_dict()) == list(checkpoint["network_weights"])
