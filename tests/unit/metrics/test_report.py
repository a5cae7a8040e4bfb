"""nnseg report: Dice table, box plot, worst-case overlays and one self-contained HTML page per model."""

from __future__ import annotations

import io
import json
import math
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnseg.cli.main import main
from nnseg.metrics.report import (
    boxplot_png,
    collect_report,
    dice_table,
    find_model_folder,
    model_info,
    overlay_pair_png,
    worst_cases,
    write_report,
)
from nnseg.metrics.report_html import render_html

DATASET = "Dataset123_Fake"
MODEL = "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
DICE = {"case_a": (0.9, 0.8), "case_b": (0.5, math.nan), "case_c": (0.7, 0.6)}
SHAPE = (6, 20, 24)  # (z, y, x) as SimpleITK arrays; slice 3 holds most reference foreground


def _write(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(path))


def _reference() -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[3, 4:12, 5:15] = 1
    seg[3, 12:16, 5:15] = 2
    seg[2, 6:8, 6:8] = 1
    return seg


def _summary(ref_folder: str) -> dict:
    cases = []
    for cid, (d1, d2) in DICE.items():
        cases.append({"metrics": {"1": {"Dice": d1, "IoU": d1}, "2": {"Dice": d2, "IoU": d2}},
                      "prediction_file": f"/elsewhere/{MODEL}/fold_0/validation/{cid}.nii.gz",
                      "reference_file": f"{ref_folder}/{cid}.nii.gz"})
    mean = {"1": {"Dice": 0.7}, "2": {"Dice": 0.7}}
    return {"foreground_mean": {"Dice": 0.7}, "mean": mean, "metric_per_case": cases}


def _progress_png(path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    fig.add_subplot(1, 1, 1).plot([0, 1, 2], [0.9, 0.5, 0.3], color="b", label="loss_tr")
    fig.savefig(path)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """results/raw/preprocessed roots with one 3-case model (fold_0 with validation, fold_1 without)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "results" / DATASET / MODEL
    (folder / "fold_1").mkdir(parents=True)
    spec = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour <b>": 2},
            "numTraining": 3, "file_ending": ".nii.gz"}
    for f in (folder / "dataset.json", tmp_path / "raw" / DATASET / "dataset.json"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(spec))
    (folder / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    (folder / "fold_0").mkdir()
    _progress_png(folder / "fold_0" / "progress.png")
    ref = _reference()
    for cid in DICE:
        _write(rng.normal(100, 20, SHAPE).astype(np.float32), tmp_path / "raw" / DATASET / "imagesTr" / f"{cid}_0000.nii.gz")
        _write(ref, tmp_path / "preprocessed" / DATASET / "gt_segmentations" / f"{cid}.nii.gz")
        _write(np.roll(ref, 2, axis=2), folder / "fold_0" / "validation" / f"{cid}.nii.gz")
    summary = _summary("/gone/gt_segmentations")  # as written on another machine: the gt folder is the fallback
    (folder / "fold_0" / "validation" / "summary.json").write_text(json.dumps(summary, indent=4))
    (folder / "fold_0" / "debug.json").write_text(json.dumps({"num_epochs": "5", "batch_size": "2", "loss": "x"}))
    (folder / "fold_0" / "network_architecture.txt").write_text("network: PlainConvUNet\nparameters: 1,234 (1,234 trainable)\n")
    crossval = folder / "crossval_results_folds_0"  # as nnUNetv2_find_best_configuration writes it
    crossval.mkdir()
    summary["metric_per_case"] = [c for c in summary["metric_per_case"] if "case_b" not in c["prediction_file"]]
    (crossval / "summary.json").write_text(json.dumps(summary))
    for cid in ("case_a", "case_c"):
        (crossval / f"{cid}.nii.gz").write_bytes((folder / "fold_0" / "validation" / f"{cid}.nii.gz").read_bytes())
    return folder


def _env(tmp_path: Path) -> dict[str, str]:
    return {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
            "nnUNet_results": str(tmp_path / "results"), "HOME": str(tmp_path)}


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_dice_table_per_case_and_label_with_means() -> None:
    table = dice_table(_summary("/ref"))
    assert table.labels == ["1", "2"]
    assert [c for c, _ in table.cases] == ["case_a", "case_b", "case_c"]
    assert table.cases[0][1] == [0.9, 0.8] and math.isnan(table.cases[1][1][1])
    assert table.mean == [0.7, 0.7] and table.foreground_mean == 0.7
    with pytest.raises(ValueError, match="metric_per_case"):
        dice_table({"mean": {}})


def test_worst_cases_rank_by_mean_foreground_dice_ignoring_nan() -> None:
    summary = _summary("/ref")
    summary["metric_per_case"].append({"metrics": {"1": {"Dice": math.nan}, "2": {"Dice": math.nan}},
                                       "prediction_file": "p/case_empty.nii.gz", "reference_file": "r/case_empty.nii.gz"})
    ranked = worst_cases(dice_table(summary), 5)
    assert [c for c, _ in ranked] == ["case_b", "case_c", "case_a"]  # 0.5, 0.65, 0.85; all-NaN never "worst"
    assert ranked[1][1] == pytest.approx(0.65)
    assert worst_cases(dice_table(summary), 1) == [("case_b", 0.5)]


def test_boxplot_is_a_png_with_content() -> None:
    pixels = _decode(boxplot_png(_summary("/ref"), label_names={"1": "liver"}))
    assert pixels.shape[0] >= 300 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_boxplot_of_many_labels_stays_a_reasonable_size() -> None:
    cases = [{"metrics": {str(k): {"Dice": 0.5 + 0.01 * k} for k in range(1, 105)}, "prediction_file": f"c{i}.nii.gz"}
             for i in range(3)]
    pixels = _decode(boxplot_png({"metric_per_case": cases}, label_names={str(k): f"organ_{k}" for k in range(1, 105)}))
    assert pixels.shape[1] <= 2400


def test_overlay_pair_shows_reference_left_and_prediction_right() -> None:
    ref = _reference()
    pred = np.zeros_like(ref)
    image = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    pixels = _decode(overlay_pair_png(image, ref, pred, min_size=0))
    gap = max(2, SHAPE[2] // 40)
    assert pixels.shape == (SHAPE[1], 2 * SHAPE[2] + gap, 3)
    left, right = pixels[:, : SHAPE[2]].astype(int), pixels[:, SHAPE[2] + gap:].astype(int)
    colour = np.abs(left - left.mean(axis=-1, keepdims=True)).sum(axis=-1) > 20  # non-gray pixels
    assert np.array_equal(colour, ref[3] > 0)  # slice 3 (most reference foreground) chosen, labels coloured
    assert np.all(right[..., 0] == right[..., 1])  # empty prediction: gray only
    assert _decode(overlay_pair_png(image, ref, pred)).shape[0] >= 256  # small slices enlarged
    stretched = _decode(overlay_pair_png(image, ref, pred, min_size=0, spacing=(3.0, 2.0, 1.0)))
    assert stretched.shape[:2] == (2 * SHAPE[1], 2 * SHAPE[2] + gap)  # rows 2 mm, columns 1 mm: square pixels
    with pytest.raises(ValueError, match="differ in shape"):
        overlay_pair_png(image, ref[:3], pred)


def test_model_and_fold_folders(model: Path) -> None:
    assert find_model_folder(model) == (model, [model / "fold_0", model / "fold_1"])
    assert find_model_folder(model / "fold_1") == (model, [model / "fold_1"])
    with pytest.raises(ValueError, match="no fold_"):
        find_model_folder(model.parent)
    info = model_info(model)
    assert (info.dataset, info.trainer, info.plans, info.configuration) == (DATASET, "nnUNetTrainer_5epochs", "nnUNetPlans", "3d_fullres")
    assert info.label_names == {"0": "background", "1": "liver", "2": "tumour <b>"}


def test_report_page_is_self_contained_with_table_plots_and_overlays(model: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw" / DATASET
    gt = tmp_path / "preprocessed" / DATASET / "gt_segmentations"
    out = write_report(model, tmp_path / "out" / "report.html", raw_dataset_folder=raw, gt_folder=gt, worst=2)
    text = out.read_text()
    assert f"{DATASET}: nnUNetTrainer_5epochs / nnUNetPlans / 3d_fullres" in text
    assert text.count('<table class="dice">') == 2 and "<td>0.7000</td>" in text  # fold_0 and cross-validation
    assert all(f'<td class="case">{c}</td>' in text for c in DICE)
    assert "tumour &lt;b&gt;" in text and "tumour <b>" not in text
    assert 'alt="training progress of fold_0"' in text and 'alt="Dice box plot of fold_0"' in text
    assert re.findall(r'alt="overlay of (\w+)"', text) == ["case_b", "case_c", "case_c", "case_a"]  # fold_0, crossval
    assert '<h2>fold_1</h2>' in text and "fold_1/validation/summary.json (run the final validation" in text
    assert '<h2>crossval_results_folds_0</h2>' in text and "Validation Dice (2 cases" in text
    assert "num_epochs <code>5</code> · batch_size <code>2</code></p>" in text
    assert "<summary>parameters: 1,234 (1,234 trainable) (network_architecture.txt)</summary>" in text
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert len(refs) == 7 and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<script" not in text and "<link" not in text and "url(" not in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_missing_raw_images_give_a_note_not_an_error(model: Path, tmp_path: Path) -> None:
    info, folds = collect_report(model / "fold_0", raw_dataset_folder=tmp_path / "nowhere", worst=1)
    assert [f.name for f in folds] == ["fold_0"] and folds[0].progress_png is not None
    assert folds[0].worst[0].png is None and "pass --raw" in folds[0].worst[0].note
    assert "pass --raw" in render_html(info, folds)


def test_cli_resolves_raw_and_gt_from_the_dataset_name(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(model), "--worst", "1"], env=_env(tmp_path), cwd=tmp_path) == 0
    text = (model / "report.html").read_text()
    assert re.findall(r'alt="overlay of (\w+)"', text) == ["case_b", "case_c"]  # fold_0, crossval
    assert main(["report", str(model.parent), "-o", "x.html"], env=_env(tmp_path), cwd=tmp_path) == 0  # one model
    assert (tmp_path / "x.html").is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")], env=_env(tmp_path), cwd=tmp_path) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_cli_takes_the_dataset_form_of_the_other_commands(model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23.4: `nnseg report -d 123` was refused ("unrecognized arguments: -d")."""
    env = _env(tmp_path)
    other = model.parent / "nnUNetTrainer__nnUNetPlans__2d"
    (other / "fold_0").mkdir(parents=True)
    assert main(["report", "-d", "123", "-c", "3d_fullres", "-tr", "nnUNetTrainer_5epochs", "--worst", "1"],
                env=env, cwd=tmp_path) == 0
    assert (model / "report.html").is_file() and not (other / "report.html").exists()
    assert f"wrote {model / 'report.html'}" in capsys.readouterr().out
    (model / "report.html").unlink()
    assert main(["report", "-d", DATASET, "--worst", "0"], env=env, cwd=tmp_path) == 0  # every model of the dataset
    assert (model / "report.html").is_file() and (other / "report.html").is_file()
    for args, expected in [(["-d", "123", "-c", "3d_lowres"], "no model *__*__3d_lowres in"),
                           (["-d", "123", "-c", "2d", "-o", "x.html"], None),
                           ([str(model), "-d", "123"], "not both"),
                           ([], "say which model"),
                           (["-d", "7"], "Dataset123_Fake")]:
        code = main(["report", *args], env=env, cwd=tmp_path)
        err = capsys.readouterr().err
        assert code == (0 if expected is None else 1), (args, err)
        assert expected is None or (expected in err and "Traceback" not in err), (args, err)


def test_nnunet_written_summary_and_progress(expected_dir: Path, tmp_path: Path) -> None:
    """The summary.json and progress.png of the model nnU-Net v2 trained on Hippocampus (no images in the zip)."""
    prefix = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2/"
    with zipfile.ZipFile(expected_dir / "Dataset004_Hippocampus" / "model" / "model.zip") as z:
        for name in ("dataset.json", "fold_0/progress.png", "fold_0/validation/summary.json"):
            (tmp_path / prefix / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / prefix / name).write_bytes(z.read(prefix + name))
    summary = json.loads((tmp_path / prefix / "fold_0/validation/summary.json").read_text())
    table = dice_table(summary)
    assert len(table.cases) == 40 and table.labels == ["1", "2"]
    assert table.foreground_mean == pytest.approx(summary["foreground_mean"]["Dice"])
    text = write_report(tmp_path / prefix, tmp_path / "r.html", worst=3).read_text()
    assert "Anterior" in text and "hippocampus_020" in text and text.count("no raw dataset folder given") == 3
