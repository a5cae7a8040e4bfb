"""Checkpoints are loaded without unpickling arbitrary objects; nnU-Net's own checkpoints still load."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nnseg.predictions.inference.checkpoint import (
    CHECKPOINT_KEYS,
    load_checkpoint,
    mirroring_axes,
    network_state_dict,
    save_checkpoint,
)

MARKER_ENV = "NNSEG_TEST_PWNED_MARKER"


class Exploit:
    """Unpickling this would create a file (proof that code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _nnunet_like_checkpoint() -> dict:
    return {
        "network_weights": {"_orig_mod.conv.weight": torch.ones(2, 1, 3, 3, 3), "conv.bias": torch.zeros(2)},
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float32(0.5), np.float64(0.7)], "lrs": [0.01]},
        "_best_ema": np.float32(0.81),
        "current_epoch": 40,
        "init_args": {"configuration": "3d_fullres", "fold": 0, "dtype": np.dtype("float32"), "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer_bench",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def test_nnunet_style_checkpoint_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_final.pth"
    save_checkpoint(_nnunet_like_checkpoint(), path)
    ckpt = load_checkpoint(path)
    assert set(ckpt) == set(CHECKPOINT_KEYS)
    assert ckpt["_best_ema"] == np.float32(0.81)
    assert ckpt["logging"]["mean_fg_dice"][1] == 0.7
    assert mirroring_axes(ckpt) == (0, 1, 2)
    weights = network_state_dict(ckpt)
    assert sorted(weights) == ["conv.bias", "conv.weight"]
    assert torch.equal(weights["conv.weight"], torch.ones(2, 1, 3, 3, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_final.pth"]  # no temporary file left


def test_checkpoint_with_arbitrary_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = _nnunet_like_checkpoint()
    ckpt["logging"]["evil"] = Exploit(marker)
    path = tmp_path / "checkpoint_final.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"refusing to load .*pathlib"):
        load_checkpoint(path)
    assert not marker.exists(), "the object was unpickled"


def test_os_system_global_is_named(tmp_path: Path) -> None:
    class Shell:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("true",))

    path = tmp_path / "c.pth"
    torch.save({"network_weights": {}, "x": Shell()}, path)
    with pytest.raises(ValueError, match="system"):
        load_checkpoint(path)


def test_missing_and_malformed_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(bad)
    no_weights = tmp_path / "w.pth"
    torch.save({"current_epoch": 3}, no_weights)
    with pytest.raises(ValueError, match="lacks \\['network_weights'\\]"):
        load_checkpoint(no_weights)
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint({"current_epoch": 1}, tmp_path / "x.pth")


def test_golden_nnunet_checkpoint_loads(expected_dir: Path, tmp_path: Path) -> None:
    import zipfile

    member = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2/fold_0/checkpoint_final.pth"
    with zipfile.ZipFile(expected_dir / "Dataset004_Hippocampus" / "model" / "model.zip") as zf:
        zf.extract(member, tmp_path)
    ckpt = load_checkpoint(tmp_path / member)
    assert ckpt["trainer_name"] == "nnUNetTrainer_bench"
    assert ckpt["init_args"]["configuration"] == "3d_fullres_bs2"
    assert mirroring_axes(ckpt) == (0, 1, 2)
    assert len(network_state_dict(ckpt)) == 188
