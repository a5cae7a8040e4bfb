"""Model zip limits and layout (nnseg.sharing.zip_limits) and the prediction input checks' numbers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnseg.sharing.zip_limits import GIB, ZipLimits, check_model_layout, check_zip_limits

MODEL = "Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"


def test_limits_from_options_env_and_defaults() -> None:
    assert ZipLimits.from_settings() == ZipLimits(16 * GIB, 200.0)
    env = {"NNSEG_MODEL_ZIP_MAX_GB": "2", "NNSEG_MODEL_ZIP_MAX_RATIO": "50"}
    assert ZipLimits.from_settings(env=env) == ZipLimits(2 * GIB, 50.0)
    assert ZipLimits.from_settings(max_gb=0.5, env=env) == ZipLimits(GIB // 2, 50.0)
    with pytest.raises(ValueError, match="NNSEG_MODEL_ZIP_MAX_GB='lots' is not a number"):
        ZipLimits.from_settings(env={"NNSEG_MODEL_ZIP_MAX_GB": "lots"})
    with pytest.raises(ValueError, match="must be positive"):
        ZipLimits.from_settings(max_ratio=0)


def _zip(tmp_path: Path, entries: dict[str, bytes]) -> zipfile.ZipFile:
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return zipfile.ZipFile(path)


def test_small_files_may_compress_well_big_ones_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with _zip(tmp_path, {f"{MODEL}/plans.json": b" " * 100_000, f"{MODEL}/fold_0/w.pth": rng.bytes(2 << 20)}) as zf:
        check_zip_limits(zf, ZipLimits(), tmp_path)  # a 100 kB JSON of spaces compresses 500:1 and is harmless
    with _zip(tmp_path, {f"{MODEL}/fold_0/w.pth": rng.bytes(2 << 20), f"{MODEL}/zeros.bin": bytes(8 << 20)}) as zf:
        with pytest.raises(ValueError, match=r"for 'Dataset004.*zeros.bin'.*zip bomb"):
            check_zip_limits(zf, ZipLimits(), tmp_path)


def test_nnunet_layout_passes_and_stray_entries_are_named(tmp_path: Path) -> None:
    good = {"Dataset004_Hippocampus/": b"", f"{MODEL}/": b"", f"{MODEL}/plans.json": b"{}",
            f"{MODEL}/fold_0/checkpoint_final.pth": b"x"}
    with _zip(tmp_path, good) as zf:
        check_model_layout(zf)
    with _zip(tmp_path, {**good, "run.sh": b"rm -rf ~", "Dataset004_Hippocampus/evil.sh": b"x",
                          "Dataset004_Hippocampus/ensembles/e1/summary.json": b"{}"}) as zf:
        with pytest.raises(ValueError, match=r"2 entries lie outside any model folder .*'run.sh'"):
            check_model_layout(zf)
