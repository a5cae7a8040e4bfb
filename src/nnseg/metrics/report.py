"""A static HTML report of a trained model: progress plots, validation Dice tables and box plots, worst cases.

Pure pieces (:func:`dice_table`, :func:`worst_cases`, :func:`boxplot_png`, :func:`overlay_pair_png`,
:func:`nnseg.metrics.report_html.render_html`) plus the I/O at the edges (:func:`collect_report`,
:func:`write_report`). The page inlines everything (CSS, PNGs as ``data:`` URIs), so a browser opens it from disk.

Example:
    >>> write_report(Path("nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"),
    ...              Path("report.html"), raw_dataset_folder=Path("nnUNet_raw/Dataset004_Hippocampus"))
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg.jsonio import atomic_path, load_json
from nnseg.metrics.overlap import label_or_region_to_key
from nnseg.metrics.report_pictures import overlay_pair_png
from nnseg.metrics.report_tables import (
    CaseImage,
    DiceTable,
    FoldResult,
    ModelInfo,
    boxplot_png,
    case_identifier,
    dice_table,
    worst_cases,
)

__all__ = [
    "CaseImage",
    "DiceTable",
    "FoldResult",
    "ModelInfo",
    "boxplot_png",
    "collect_report",
    "dice_table",
    "find_model_folder",
    "model_info",
    "overlay_pair_png",
    "worst_cases",
    "write_report",
]


def _fold_order(folder: Path) -> tuple[int, str]:
    suffix = folder.name[len("fold_"):]
    return (int(suffix), "") if suffix.isdigit() else (1 << 30, suffix)


def find_model_folder(path: Path) -> tuple[Path, list[Path]]:
    """The model folder and its fold folders, for a model folder (all ``fold_*``) or one fold folder.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        ValueError: it is neither a fold folder nor holds any ``fold_*`` folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass a trained model folder "
                                "(nnUNet_results/DatasetX/<Trainer>__<Plans>__<configuration>) or one of its fold_k folders")
    if path.name.startswith("fold_"):
        return path.parent, [path]
    folds = sorted((p for p in path.iterdir() if p.is_dir() and p.name.startswith("fold_")), key=_fold_order)
    if not folds:
        raise ValueError(f"{path} holds no fold_* folder; pass a trained model folder "
                         "(nnUNet_results/DatasetX/<Trainer>__<Plans>__<configuration>) or one of its fold_k folders")
    return path, folds


def _label_names(dataset_json: Path) -> dict[str, str]:
    if not dataset_json.is_file():
        return {}
    labels = load_json(dataset_json).get("labels", {})
    names = {}
    for name, value in labels.items():
        names[label_or_region_to_key(tuple(value) if isinstance(value, list) else value)] = str(name)
    return names


def model_info(model_folder: Path) -> ModelInfo:
    """Dataset, trainer, plans and configuration from ``DatasetX/<Trainer>__<Plans>__<configuration>``."""
    model_folder = Path(model_folder)
    parts = model_folder.name.split("__")
    trainer, plans, configuration = parts if len(parts) == 3 else (model_folder.name, "unknown", "unknown")
    return ModelInfo(dataset=model_folder.parent.name, trainer=trainer, plans=plans, configuration=configuration,
                     folder=str(model_folder.resolve()), label_names=_label_names(model_folder / "dataset.json"))


@dataclass
class _Sources:
    """Where the images and references of the worst cases come from."""

    reader: Any
    images: dict[str, tuple[Path, ...]]
    labels: dict[str, Path | None]
    gt_folder: Path | None
    channel: int
    note: str = ""


def _sources(model_folder: Path, raw_dataset_folder: Path | None, gt_folder: Path | None, channel: int) -> _Sources:
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.discover import training_cases
    from nnseg.raw.image_io import determine_io, get_io

    if raw_dataset_folder is None or not Path(raw_dataset_folder).is_dir():
        why = "no raw dataset folder given" if raw_dataset_folder is None else f"raw dataset folder {raw_dataset_folder} not found"
        return _Sources(None, {}, {}, gt_folder, channel, note=f"{why}: overlay images skipped (pass --raw RAW_DATASET_FOLDER)")
    raw = Path(raw_dataset_folder)
    spec = load_dataset_json(raw / "dataset.json" if (raw / "dataset.json").is_file() else model_folder / "dataset.json")
    try:
        cases = training_cases(raw, spec)
    except (FileNotFoundError, ValueError) as e:
        return _Sources(None, {}, {}, gt_folder, channel, note=f"overlay images skipped: {e}")
    plans = model_folder / "plans.json"
    name = load_json(plans).get("image_reader_writer") if plans.is_file() else None
    example = cases[0].images[0] if cases else None
    reader = get_io(name) if name else determine_io(spec.file_ending, example, overwrite=spec.overwrite_image_reader_writer)
    return _Sources(reader, {c.identifier: c.images for c in cases}, {c.identifier: c.label for c in cases}, gt_folder, channel)


def _first_file(candidates: Sequence[Path | None]) -> Path | None:
    return next((p for p in candidates if p is not None and p.is_file()), None)


def _case_image(identifier: str, mean: float, entry: Mapping[str, Any], predictions: Path, src: _Sources) -> CaseImage:
    if src.reader is None:
        return CaseImage(identifier, mean, None, src.note)
    pred_name, ref_name = Path(str(entry.get("prediction_file"))), Path(str(entry.get("reference_file")))
    prediction = _first_file([predictions / pred_name.name, pred_name])
    reference = _first_file([ref_name, src.gt_folder / ref_name.name if src.gt_folder else None, src.labels.get(identifier)])
    images = src.images.get(identifier)
    missing = [what for what, p in (("image", images), ("reference", reference), ("prediction", prediction)) if not p]
    if missing:
        return CaseImage(identifier, mean, None, f"no {' / '.join(missing)} file found for {identifier}")
    try:
        image, geometry = src.reader.read_images(list(images))
        ref, _ = src.reader.read_seg(reference)
        pred, _ = src.reader.read_seg(prediction)
        channel = min(src.channel, image.shape[0] - 1)
        return CaseImage(identifier, mean, overlay_pair_png(image[channel], ref[0], pred[0], spacing=geometry.spacing))
    except (ValueError, OSError, RuntimeError) as e:
        return CaseImage(identifier, mean, None, f"could not draw {identifier}: {e}")


#: ``debug.json`` entries shown per fold (nnU-Net's and nnseg's names).
RUN_KEYS = ("num_epochs", "num_iterations_per_epoch", "iterations_per_epoch", "batch_size", "patch_size", "initial_lr",
            "precision", "seed", "device", "gpu_name", "torch_version", "hostname")


def _run_info(fold: Path) -> dict[str, str]:
    path = fold / "debug.json"
    try:
        debug = load_json(path) if path.is_file() else {}
    except ValueError:
        return {}
    return {k: str(debug[k]) for k in RUN_KEYS if k in debug and str(debug[k]) not in ("None", "")}


def _read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def _fold_result(fold: Path, src: _Sources, worst: int, *, predictions: Path) -> FoldResult:
    """A fold folder (predictions in ``validation/``) or a ``crossval_results_folds_*`` folder (predictions in it)."""
    progress = fold / "progress.png"
    summary_file = predictions / "summary.json"
    is_fold = predictions != fold
    notes = [f"no progress.png in {fold}"] if is_fold and not progress.is_file() else []
    extra = {"run_info": _run_info(fold), "architecture": _read_text(fold / "network_architecture.txt")}
    png = progress.read_bytes() if progress.is_file() else None
    if not summary_file.is_file():
        notes.append(f"no {summary_file} (run the final validation: nnUNetv2_train ... --val)")
        return FoldResult(fold.name, png, None, (), notes, **extra)
    summary = load_json(summary_file)
    entries = {case_identifier(str(c.get("prediction_file") or c.get("reference_file"))): c
               for c in summary["metric_per_case"]}
    images = [_case_image(cid, mean, entries[cid], predictions, src) for cid, mean in worst_cases(dice_table(summary), worst)]
    return FoldResult(fold.name, png, summary, images, notes, **extra)


def collect_report(path: Path, *, raw_dataset_folder: Path | None = None, gt_folder: Path | None = None,
                   worst: int = 5, channel: int = 0) -> tuple[ModelInfo, list[FoldResult]]:
    """Read everything the report of one model shows (the I/O half of :func:`write_report`).

    Args:
        path: a model folder ``DatasetX/<Trainer>__<Plans>__<configuration>`` (every ``fold_k``, then every
            ``crossval_results_folds_*`` with a ``summary.json``) or one of its ``fold_k`` folders.
        raw_dataset_folder: ``nnUNet_raw/DatasetX`` (images of the worst cases); None skips the overlays.
        gt_folder: reference segmentations (``nnUNet_preprocessed/DatasetX/gt_segmentations``), used when the
            ``reference_file`` written in ``summary.json`` no longer exists; the raw ``labelsTr`` is the last resort.
        worst: number of worst cases (lowest mean foreground Dice) drawn per fold.
        channel: image channel drawn under the labels.
    """
    model_folder, folds = find_model_folder(path)
    src = _sources(model_folder, raw_dataset_folder, gt_folder, channel)
    results = [_fold_result(f, src, worst, predictions=f / "validation") for f in folds]
    if not Path(path).name.startswith("fold_"):
        crossval = sorted(p for p in model_folder.glob("crossval_results_folds_*") if (p / "summary.json").is_file())
        results += [_fold_result(p, src, worst, predictions=p) for p in crossval]
    return model_info(model_folder), results


def write_report(path: Path, output_file: Path, *, raw_dataset_folder: Path | None = None, gt_folder: Path | None = None,
                 worst: int = 5, channel: int = 0) -> Path:
    """Write the self-contained HTML report of one model atomically; returns ``output_file``."""
    from nnseg.metrics.report_html import render_html

    info, folds = collect_report(path, raw_dataset_folder=raw_dataset_folder, gt_folder=gt_folder, worst=worst,
                                 channel=channel)
    text = render_html(info, folds)
    with atomic_path(output_file) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(output_file)
