"""Overlay pictures: slice choice, colour blending, raw and preprocessed sources, CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnseg.cli.main import main
from nnseg.metrics.overlay import (
    COLOR_CYCLE,
    hex_to_rgb,
    overlay,
    plot_overlay_pngs_preprocessed,
    plot_overlay_pngs_raw,
    preprocessed_data_folder,
    select_slice,
)
from nnseg.raw.demo_data import make_demo_dataset


def test_select_slice_weights_labels_equally() -> None:
    seg = np.zeros((8, 10, 10), dtype=np.int16)
    seg[2, :10, :10] = 1  # 100 voxels of label 1
    seg[5, :5, :10] = 1  # 50 voxels of label 1
    seg[5, 8:, 8:] = 2  # all 4 voxels of label 2
    assert select_slice(seg) == 5  # 50/150 + 4/4 beats 100/150 (a plain voxel count would pick 2)
    assert select_slice(np.where(seg == 2, 0, seg)) == 2
    assert select_slice(np.zeros((7, 3, 3), dtype=np.int8)) == 3  # no foreground: middle slice
    assert select_slice(-np.ones((4, 3, 3), dtype=np.int8)) == 2  # -1 (outside the crop mask) is background
    tie = np.zeros((4, 2, 2), dtype=np.int8)
    tie[1, 0, 0] = tie[3, 0, 0] = 1
    assert select_slice(tie) == 1
    with pytest.raises(ValueError, match="shape"):
        select_slice(np.zeros((3, 3)))


def test_overlay_blends_label_colours() -> None:
    image = np.array([[0.0, 10.0], [20.0, 40.0]])
    seg = np.array([[0, 1], [-1, 16]])
    out = overlay(image, seg, intensity=0.6)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0, 0, 0]  # background stays gray (min -> 0)
    assert out[1, 0].tolist() == [128, 128, 128]  # -1 is not coloured; 20/40*255 = 127.5 -> 128
    c1 = np.array(hex_to_rgb(COLOR_CYCLE[0]))
    assert out[0, 1].tolist() == np.rint(0.4 * 63.75 + 0.6 * c1).astype(int).tolist()
    assert out[1, 1].tolist() == np.rint(0.4 * 255 + 0.6 * c1).astype(int).tolist()  # label 16 wraps to colour 1
    assert overlay(image, seg, intensity=1.0)[0, 1].tolist() == c1.tolist()
    assert np.ptp(overlay(image, seg, intensity=0.0), axis=-1).max() == 0  # no colour at all
    assert overlay(np.full((2, 2), 5.0), seg)[0, 0].tolist() == [0, 0, 0]  # constant image: no division by zero
    colours = {tuple(overlay(image, np.full((2, 2), lab), intensity=1.0)[0, 0]) for lab in range(1, 16)}
    assert len(colours) == 15
    with pytest.raises(ValueError, match="between 0 and 1"):
        overlay(image, seg, intensity=1.5)
    with pytest.raises(ValueError, match="equal 2D shapes"):
        overlay(image, seg[:1])


@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw") / "Dataset998_Demo"
    return make_demo_dataset(raw, num_cases=3, num_test=0, num_channels=2, shape=(12, 24, 28))


def test_raw_overlays_in_spawn_pool(demo_raw: Path, tmp_path: Path) -> None:
    written = plot_overlay_pngs_raw(demo_raw, tmp_path / "png", channel_idx=1, num_processes=2)
    assert [p.name for p in written] == ["case_000.png", "case_001.png", "case_002.png"]
    import SimpleITK as sitk

    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_raw / "labelsTr" / "case_000.nii.gz")))
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape == (24, 28, 3) and picture.dtype == np.uint8
    best = seg[select_slice(seg)]
    coloured = np.ptp(picture.astype(int), axis=-1) > 0
    assert best.max() > 0 and np.array_equal(coloured, best > 0)
    with pytest.raises(ValueError, match="out of range"):
        plot_overlay_pngs_raw(demo_raw, tmp_path / "x", channel_idx=2, num_processes=1)


def test_raw_2d_png_dataset(tmp_path: Path) -> None:
    raw = make_demo_dataset(tmp_path / "Dataset997_Demo2D", num_cases=2, num_test=0, dims=2, shape=(32, 40))
    written = plot_overlay_pngs_raw(raw, tmp_path / "png", num_processes=1)
    assert np.asarray(Image.open(written[1])).shape == (32, 40, 3)


def test_preprocessed_overlays(tmp_path: Path, expected_dir: Path) -> None:
    store = pytest.importorskip("nnseg.preprocessed.store")
    dataset = tmp_path / "Dataset004_Hippocampus"
    dataset.mkdir()
    shutil.copy(expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json", dataset / "nnUNetPlans.json")
    with pytest.raises(FileNotFoundError, match="nnUNetPlans_3d_fullres"):
        preprocessed_data_folder(dataset)
    folder = dataset / "nnUNetPlans_3d_fullres"
    rng = np.random.default_rng(0)
    seg = np.full((1, 6, 9, 7), -1, dtype=np.int8)
    seg[0, 1:5, 2:8, 1:6] = 0
    seg[0, 4, 3:6, 2:5] = 2
    store.save_case(folder, "hippocampus_001", rng.normal(size=(1, 6, 9, 7)).astype(np.float32), seg,
                    {"spacing": [1.0, 1.0, 1.0]}, patch_size=(4, 4, 4))
    assert preprocessed_data_folder(dataset) == folder
    (dataset / "nnUNetPlans_2d").mkdir()
    assert preprocessed_data_folder(dataset, configuration="2d") == dataset / "nnUNetPlans_2d"
    with pytest.raises(ValueError, match="available"):
        preprocessed_data_folder(dataset, configuration="3d_nope")
    written = plot_overlay_pngs_preprocessed(folder, tmp_path / "png", num_processes=1)
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape == (9, 7, 3)
    coloured = np.ptp(picture.astype(int), axis=-1) > 0
    assert np.array_equal(coloured, seg[0, 4] > 0)
    assert picture[coloured][0].tolist() != picture[~coloured][0].tolist()


def test_cli_plot_overlay(demo_raw: Path, roots_env: dict[str, str], tmp_path: Path, capsys) -> None:
    shutil.copytree(demo_raw, Path(roots_env["nnUNet_raw"]) / demo_raw.name)
    rc = main(["plot-overlay", "-d", "998", "-o", "pngs", "--use_raw", "-np", "1", "-overlay_intensity", "0.5"],
              env=roots_env, cwd=tmp_path)
    assert rc == 0 and "wrote 3 overlay pictures" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["case_000.png", "case_001.png", "case_002.png"]
    rc = main(["plot-overlay", "-d", "998", "-o", "pngs"], env=roots_env, cwd=tmp_path)
    assert rc == 1 and "nnUNetPlans.json does not exist" in capsys.readouterr().err
