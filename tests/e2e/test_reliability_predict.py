"""Issue 12, prediction and model-sharing side: inputs refused before any work (items 1 and 9), model zip limits and
layout (item 5), OSErrors as one line with nothing partial left (item 6)."""

from __future__ import annotations

import copy
import errno
import json
import shutil
import struct
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


def _model(root: Path, expected_dir: Path, *, reader: str | None = None) -> Path:
    golden = expected_dir / "Dataset004_Hippocampus"
    plans = json.loads((golden / "nnUNetPlans.json").read_text())
    plans = dict(copy.deepcopy(plans), dataset_name=DATASET, configurations={"3d_tiny": tiny_3d_configuration(plans)})
    if reader:
        plans["image_reader_writer"] = reader
    folder = root / DATASET / MODEL
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    shutil.copy(golden / "dataset.json", folder / "dataset.json")
    torch.manual_seed(0)
    net = build_network(plans["configurations"]["3d_tiny"]["architecture"], input_channels=1, num_classes=3,
                        deep_supervision=False)
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer_5epochs",
                     "init_args": {"configuration": "3d_tiny", "fold": 0}, "current_epoch": 5,
                     "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _image(path: Path, array: np.ndarray, spacing: tuple[float, ...] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _predict(env: dict[str, str], images: Path, out: Path) -> int:
    return main(["predict", "-i", str(images), "-o", str(out), "-d", "777", "-c", "3d_tiny", "-tr",
                 "nnUNetTrainer_5epochs", "-f", "0", "-device", "cpu", "--disable_progress_bar", "--disable_tta",
                 "-npp", "0", "-nps", "0"], env=env)


def _refused(rc: int, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture
def model(roots_env: dict[str, str], expected_dir: Path) -> Path:
    return _model(Path(roots_env["nnUNet_results"]), expected_dir)


def _volume(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(100, 20, size=(10, 14, 12))


def test_output_folder_equal_to_input_is_refused(model: Path, roots_env: dict[str, str], tmp_path: Path, capsys,
                                                 rng: np.random.Generator) -> None:
    images = tmp_path / "images"
    _image(images / "case_a_0000.nii.gz", _volume(rng))
    _refused(_predict(roots_env, images, images), capsys, str(images), "would be written among the images",
             "choose another output folder")
    assert sorted(p.name for p in images.iterdir()) == ["case_a_0000.nii.gz"]  # nothing written


def test_2d_image_given_to_a_3d_model_is_refused(model: Path, roots_env: dict[str, str], tmp_path: Path, capsys,
                                                rng: np.random.Generator) -> None:
    flat = _image(tmp_path / "images" / "case_a_0000.nii.gz", rng.normal(100, 20, size=(30, 40)))
    out = tmp_path / "out"
    _refused(_predict(roots_env, flat.parent, out), capsys, str(flat), "is a 2D image", "3d_tiny is a 3D model",
             "-c 2d")
    assert not (out / "case_a.nii.gz").exists() and not list(out.glob(".*"))


def test_implausible_spacing_is_refused_before_resampling(model: Path, roots_env: dict[str, str], tmp_path: Path,
                                                          capsys, rng: np.random.Generator) -> None:
    coarse = _image(tmp_path / "images" / "case_a_0000.nii.gz", _volume(rng), spacing=(1.0, 1.0, 40.0))
    _refused(_predict(roots_env, coarse.parent, tmp_path / "out"), capsys, str(coarse), "upsample axis", "40 times",
             "more than 16 times", "check the spacing in its header")


def test_non_finite_input_names_the_file(roots_env: dict[str, str], expected_dir: Path, tmp_path: Path, capsys,
                                         rng: np.random.Generator) -> None:
    _model(Path(roots_env["nnUNet_results"]), expected_dir, reader="NibabelIO")  # SimpleITK reads NaN as 0
    import nibabel

    array = _volume(rng)
    array[2, 3, 4] = np.nan
    bad = tmp_path / "images" / "case_a_0000.nii.gz"
    bad.parent.mkdir()
    nibabel.save(nibabel.Nifti1Image(array.astype(np.float32), np.eye(4)), str(bad))
    out = tmp_path / "out"
    _refused(_predict(roots_env, bad.parent, out), capsys, str(bad), "1 NaN or infinite value(s)", "replace them")
    assert not (out / "case_a.nii.gz").exists()


def test_output_under_a_file_is_one_line(model: Path, roots_env: dict[str, str], tmp_path: Path, capsys,
                                         rng: np.random.Generator) -> None:
    images = tmp_path / "images"
    _image(images / "case_a_0000.nii.gz", _volume(rng))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    _refused(_predict(roots_env, images, blocker / "out"), capsys, str(blocker), "[ENOTDIR]",
             "a part of the path is a file")


def test_disk_full_while_writing_a_prediction(model: Path, roots_env: dict[str, str], tmp_path: Path, capsys,
                                              rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnseg.raw.io_sitk import SimpleITKIO

    def full(self, seg, path, geometry):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")  # a write on a handle: no file name

    monkeypatch.setattr(SimpleITKIO, "_write_file", full)
    images, out = tmp_path / "images", tmp_path / "out"
    _image(images / "case_a_0000.nii.gz", _volume(rng))
    _refused(_predict(roots_env, images, out), capsys, str(out / "case_a.nii.gz"), "No space left on device [ENOSPC]",
             "the disk is full")
    assert not (out / "case_a.nii.gz").exists() and not list(out.glob(".*"))  # no half file, no temp file


# ------------------------------------------------------------------------------------------------ model zips
def _model_zip(tmp_path: Path, expected_dir: Path, extra: dict[str, bytes] | None = None) -> Path:
    staging = tmp_path / "staging"
    _model(staging, expected_dir)
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(staging.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(staging).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def _declare_size(path: Path, entry: str, size: int) -> None:
    """Patch the central directory so that ``entry`` declares ``size`` uncompressed bytes (a zip-bomb header)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        start = zf.start_dir
    pos = start
    while data[pos:pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[pos + 28:pos + 34])
        if data[pos + 46:pos + 46 + name_len].decode() == entry:
            data[pos + 24:pos + 28] = struct.pack("<I", size)
        pos += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(data))


def _results_untouched(env: dict[str, str]) -> None:
    assert list(Path(env["nnUNet_results"]).iterdir()) == []


def test_zip_declaring_2gib_from_a_small_file_is_refused(roots_env: dict[str, str], expected_dir: Path,
                                                         tmp_path: Path, capsys) -> None:
    name = f"{DATASET}/{MODEL}/fold_0/big.bin"
    path = _model_zip(tmp_path, expected_dir, {name: bytes(4 << 20)})
    _declare_size(path, name, 2 << 30)
    assert path.stat().st_size < 2_000_000
    _refused(main(["install-model", str(path)], env=roots_env), capsys, str(path), "beyond the limit of 200:1",
             "zip bomb", "--max-zip-ratio")
    _results_untouched(roots_env)


def test_zip_total_size_limit_from_env_and_option(roots_env: dict[str, str], expected_dir: Path, tmp_path: Path,
                                                  capsys) -> None:
    path = _model_zip(tmp_path, expected_dir, {f"{DATASET}/{MODEL}/fold_0/noise.bin": np.random.default_rng(0).bytes(3 << 20)})
    env = dict(roots_env, NNSEG_MODEL_ZIP_MAX_GB="0.001")
    _refused(main(["install-model", str(path)], env=env), capsys, "unpacks to 0.00 GiB, more than the limit of 0.00 GiB",
             "NNSEG_MODEL_ZIP_MAX_GB", "--max-unzipped-gb")
    _results_untouched(roots_env)
    assert main(["install-model", str(path), "--max-unzipped-gb", "1"], env=env) == 0
    assert (Path(roots_env["nnUNet_results"]) / DATASET / MODEL / "fold_0" / "checkpoint_final.pth").is_file()


@pytest.mark.parametrize("entry", ["README.txt", f"{DATASET}/notes.txt", "Dataset777/x__y__z/plans.json",
                                   f"{DATASET}/not_a_model/plans.json"])
def test_zip_entry_outside_a_model_folder_is_refused(roots_env: dict[str, str], expected_dir: Path, tmp_path: Path,
                                                     capsys, entry: str) -> None:
    path = _model_zip(tmp_path, expected_dir, {entry: b"x"})
    _refused(main(["install-model", str(path)], env=roots_env), capsys, repr(entry), "outside any model folder",
             "Re-export the model")
    _results_untouched(roots_env)


def test_disk_full_while_installing_leaves_nothing(roots_env: dict[str, str], expected_dir: Path, tmp_path: Path,
                                                   capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _model_zip(tmp_path, expected_dir)
    real = shutil.copyfileobj
    copies = []

    def full(src, dst, *args):  # type: ignore[no-untyped-def]
        copies.append(dst)
        if len(copies) > 1:
            dst.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args)

    monkeypatch.setattr(shutil, "copyfileobj", full)
    results = Path(roots_env["nnUNet_results"])
    _refused(main(["install-model", str(path)], env=roots_env), capsys, str(results), "[ENOSPC]", "the disk is full")
    assert list(results.iterdir()) == []  # the temporary extraction folder is gone, no half model
