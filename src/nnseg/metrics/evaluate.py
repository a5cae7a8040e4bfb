"""Evaluate a folder of predicted segmentations against references; write nnU-Net's ``summary.json``.

``summary.json`` is exactly nnU-Net's (``nnUNetv2_evaluate_folder``): ``{"foreground_mean": {metric: ...},
"mean": {"1": {...}, "(1, 2)": {...}}, "metric_per_case": [{"metrics": {...}, "prediction_file": ...,
"reference_file": ...}]}`` written with ``sort_keys=True, indent=4``; NaN is written as ``NaN``.

* per case: :func:`nnseg.metrics.overlap.overlap_metrics` (plus surface metrics under extra keys when asked for);
* ``mean[label][metric]``: ``np.nanmean`` over cases;
* ``foreground_mean[metric]``: ``np.mean`` over the class means of every label/region except label 0 (so one class
  whose mean is NaN makes it NaN, as in nnU-Net);
* only files present in the prediction folder are evaluated; unless ``chill``, every reference must have a prediction.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnseg._types import IgnoreLabels, ImageIO, LabelOrRegion, PathLike
from nnseg.jsonio import save_json
from nnseg.metrics.overlap import ignore_mask_of, label_or_region_to_key, overlap_metrics, region_or_label_to_mask
from nnseg.metrics.surface import SurfaceOptions, surface_metrics
from nnseg.parallel import spawn_map
from nnseg.raw.partial_labels import PartialLabels

DEFAULT_NUM_PROCESSES = 8  # nnU-Net's default_num_processes (nnUNet_def_n_proc)


def list_files(folder: PathLike, file_ending: str) -> list[str]:
    """Sorted names of the files in ``folder`` ending with ``file_ending`` (hidden files left out).

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith("."))


def case_metrics(ref_seg: np.ndarray, pred_seg: np.ndarray, labels_or_regions: Sequence[LabelOrRegion], *,
                 ignore_label: IgnoreLabels = None, spacing: Sequence[float] | None = None,
                 surface: SurfaceOptions | None = None) -> dict[LabelOrRegion, dict[str, Any]]:
    """All metrics of one case (pure): nnU-Net's overlap metrics, then the surface metrics if ``surface`` is set.

    Args:
        ref_seg, pred_seg: label maps ``(1, X, Y, Z)`` (or any equal shapes).
        spacing: voxel size of the spatial axes (``len == ref_seg.ndim - 1``); needed for surface metrics.
        surface: which surface metrics to add (ignore-label voxels are removed from both masks first).
    """
    metrics = overlap_metrics(ref_seg, pred_seg, labels_or_regions, ignore_label=ignore_label)
    if surface is None:
        return metrics
    if spacing is None:
        raise ValueError("surface metrics need the voxel spacing")
    ignored = ignore_mask_of(ref_seg, ignore_label)
    keep = np.ones(ref_seg.shape, bool) if ignored is None else ~ignored
    for r in metrics:
        ref_mask = region_or_label_to_mask(ref_seg, r) & keep
        pred_mask = region_or_label_to_mask(pred_seg, r) & keep
        metrics[r].update(surface_metrics(ref_mask[0], pred_mask[0], spacing, surface))
    return metrics


def compute_metrics(reference_file: str, prediction_file: str, *, io: str | ImageIO,
                    labels_or_regions: Sequence[LabelOrRegion], ignore_label: IgnoreLabels = None,
                    surface: SurfaceOptions | None = None) -> dict[str, Any]:
    """Read one reference/prediction pair and return nnU-Net's per-case entry
    ``{"reference_file", "prediction_file", "metrics": {label_or_region: {...}}}``."""
    from nnseg.raw.image_io import get_io

    reader = get_io(io)
    ref_seg, geometry = reader.read_seg(reference_file)
    pred_seg, _ = reader.read_seg(prediction_file)
    if ref_seg.shape != pred_seg.shape:
        raise ValueError(f"{prediction_file} has shape {pred_seg.shape[1:]} but its reference {reference_file} has "
                         f"{ref_seg.shape[1:]}; predictions must be exported in the reference's geometry")
    metrics = case_metrics(ref_seg, pred_seg, labels_or_regions, ignore_label=ignore_label,
                           spacing=geometry.spacing, surface=surface)
    return {"reference_file": reference_file, "prediction_file": prediction_file, "metrics": metrics}


def _case_worker(job: tuple[str, str, Any, list[LabelOrRegion], int | None, SurfaceOptions | None]) -> dict[str, Any]:
    ref, pred, io, labels, ignore, surface = job
    return compute_metrics(ref, pred, io=io, labels_or_regions=labels, ignore_label=ignore, surface=surface)


def aggregate_metrics(per_case: Sequence[dict[str, Any]],
                      labels_or_regions: Sequence[LabelOrRegion]) -> tuple[dict[LabelOrRegion, dict[str, float]], dict[str, float]]:
    """``(mean, foreground_mean)`` as nnU-Net computes them (see the module docstring)."""
    if not per_case:
        raise ValueError("no cases to aggregate")
    keys = [tuple(r) if isinstance(r, list) else r for r in labels_or_regions]
    metric_names = list(per_case[0]["metrics"][keys[0]].keys())
    means: dict[LabelOrRegion, dict[str, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN: NaN, as nnU-Net
        for r in keys:
            means[r] = {m: float(np.nanmean([c["metrics"][r][m] for c in per_case])) for m in metric_names}
    foreground = [r for r in keys if not (isinstance(r, int) and r == 0)]
    foreground_mean = {m: float(np.mean([means[r][m] for r in foreground])) for m in metric_names}
    return means, foreground_mean


def unscore_undrawn(case: dict[str, Any], partial: PartialLabels, file_ending: str) -> dict[str, Any]:
    """A case's metrics with NaN for every label its annotation does not draw (partial labels)."""
    identifier = Path(str(case["reference_file"])).name.removesuffix(file_ending)
    missing = set(partial.missing(identifier))
    if not missing:
        return case
    metrics = {k: ({m: float("nan") for m in v} if k in missing else v) for k, v in case["metrics"].items()}
    return {**case, "metrics": metrics}


def summary_to_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` dict: label/region keys turned into strings (``"1"``, ``"(1, 2)"``)."""
    return {
        "foreground_mean": dict(summary["foreground_mean"]),
        "mean": {label_or_region_to_key(k): dict(v) for k, v in summary["mean"].items()},
        "metric_per_case": [
            {"metrics": {label_or_region_to_key(k): dict(v) for k, v in c["metrics"].items()},
             "prediction_file": str(c["prediction_file"]), "reference_file": str(c["reference_file"])}
            for c in summary["metric_per_case"]
        ],
    }


def save_summary_json(summary: dict[str, Any], output_file: PathLike) -> None:
    """Write ``summary.json`` atomically, as nnU-Net (``sort_keys=True, indent=4``)."""
    save_json(summary_to_json(summary), output_file, sort_keys=True, indent=4)


def _pair_files(ref_folder: Path, pred_folder: Path, file_ending: str, chill: bool) -> tuple[list[str], list[str]]:
    preds = list_files(pred_folder, file_ending)
    refs = list_files(ref_folder, file_ending)
    if not preds:
        raise FileNotFoundError(f"no predictions ending with {file_ending!r} in {pred_folder}; check the folder and "
                                "the file ending")
    missing_refs = sorted(set(preds) - set(refs))
    if missing_refs:
        raise FileNotFoundError(f"{len(missing_refs)} predictions in {pred_folder} have no reference in {ref_folder}: "
                                f"{missing_refs[:10]}{' ...' if len(missing_refs) > 10 else ''}")
    missing_preds = sorted(set(refs) - set(preds))
    if missing_preds and not chill:
        raise FileNotFoundError(f"{len(missing_preds)} references in {ref_folder} have no prediction in {pred_folder}: "
                                f"{missing_preds[:10]}{' ...' if len(missing_preds) > 10 else ''}; predict them or "
                                "pass chill=True (--chill) to evaluate only the predicted cases")
    return [str(ref_folder / n) for n in preds], [str(pred_folder / n) for n in preds]


def _run_jobs(jobs: list[tuple[Any, ...]], num_processes: int) -> list[dict[str, Any]]:
    return spawn_map(_case_worker, jobs, num_processes=num_processes)


def evaluate_folder(ref_folder: PathLike, pred_folder: PathLike, *, labels_or_regions: Sequence[LabelOrRegion],
                    file_ending: str, io: str | ImageIO | None = None, ignore_label: IgnoreLabels = None,
                    output_file: PathLike | None = None, num_processes: int = DEFAULT_NUM_PROCESSES,
                    chill: bool = False, surface_metrics: SurfaceOptions | None = None,
                    partial: PartialLabels | None = None) -> dict[str, Any]:
    """Evaluate every prediction in ``pred_folder`` against the same-named file in ``ref_folder``.

    Args:
        labels_or_regions: ints (labels) or tuples (regions) to evaluate, e.g. ``DatasetSpec.foreground_labels_or_regions``.
        file_ending: e.g. ``.nii.gz``; only files with this ending are considered.
        io: reader name or instance; default chosen with ``determine_io`` from a reference file.
        ignore_label: reference voxels with this value are left out.
        output_file: ``summary.json`` path (must end with ``.json``); None writes nothing.
        num_processes: worker processes (spawn); 1 runs in this process.
        chill: allow references without prediction (otherwise an error lists them).
        surface_metrics: add HD95 / NSD per case (extra keys); None (default) gives nnU-Net's fields only.
        partial: partially annotated cases (``annotated_labels``): their undrawn labels get NaN metrics, so the means
            leave them out.

    Returns:
        ``{"metric_per_case": [...], "mean": {label_or_region: {...}}, "foreground_mean": {...}}`` with int/tuple keys.
    """
    if output_file is not None and not str(output_file).endswith(".json"):
        raise ValueError(f"output file {output_file} must end with .json")
    if not labels_or_regions:
        raise ValueError("no labels or regions to evaluate; pass e.g. labels_or_regions=[1, 2]")
    refs, preds = _pair_files(Path(ref_folder), Path(pred_folder), file_ending, chill)
    if io is None:
        from nnseg.raw.image_io import determine_io

        io = determine_io(file_ending, refs[0])
    labels = [tuple(r) if isinstance(r, list) else r for r in labels_or_regions]
    jobs = [(r, p, io, labels, ignore_label, surface_metrics) for r, p in zip(refs, preds)]
    per_case = _run_jobs(jobs, num_processes)
    if partial is not None:
        per_case = [unscore_undrawn(c, partial, file_ending) for c in per_case]
    means, foreground_mean = aggregate_metrics(per_case, labels)
    summary = {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground_mean}
    if output_file is not None:
        save_summary_json(summary, output_file)
    return summary


def evaluate_folder_with_dataset(ref_folder: PathLike, pred_folder: PathLike, *, dataset_json_file: PathLike,
                                 plans_file: PathLike | None = None, output_file: PathLike | None = None,
                                 num_processes: int = DEFAULT_NUM_PROCESSES, chill: bool = False,
                                 surface_metrics: SurfaceOptions | None = None) -> dict[str, Any]:
    """``nnUNetv2_evaluate_folder``: labels/regions, ignore label and file ending from ``dataset.json``.

    The reader is ``dataset.json['overwrite_image_reader_writer']`` if set, else the plans' ``image_reader_writer``
    (when ``plans_file`` is given), else chosen from the file ending and a reference file. ``output_file`` defaults
    to ``pred_folder/summary.json``.
    """
    from nnseg.raw.dataset_json import load_dataset_json

    spec = load_dataset_json(dataset_json_file)
    io: str | None = spec.overwrite_image_reader_writer if spec.overwrite_image_reader_writer not in (None, "None") else None
    if io is None and plans_file is not None:
        from nnseg.plans.schema import load_plans

        io = load_plans(plans_file).image_reader_writer
    return evaluate_folder(ref_folder, pred_folder, labels_or_regions=spec.foreground_labels_or_regions,
                           file_ending=spec.file_ending, io=io, ignore_label=spec.ignore_values or None,
                           output_file=Path(pred_folder) / "summary.json" if output_file is None else output_file,
                           num_processes=num_processes, chill=chill, surface_metrics=surface_metrics,
                           partial=spec.partial_labels)


def _ending_of(ref_folder: Path) -> str:
    """The file ending of the first file in ``ref_folder``: the longest known image ending it has, else its suffix."""
    from nnseg.raw.image_io import IMAGE_IO

    files = list_files(ref_folder, "")
    if not files:
        raise FileNotFoundError(f"reference folder {ref_folder} has no files")
    known = sorted({e for n in IMAGE_IO for e in IMAGE_IO[n].supported_file_endings}, key=len, reverse=True)
    name = files[0].lower()
    for ending in known:
        if name.endswith(ending):
            return files[0][len(files[0]) - len(ending):]
    return Path(files[0]).suffix


def evaluate_folder_simple(ref_folder: PathLike, pred_folder: PathLike, *, labels: Sequence[int],
                           ignore_label: IgnoreLabels = None, output_file: PathLike | None = None,
                           num_processes: int = DEFAULT_NUM_PROCESSES, chill: bool = False,
                           surface_metrics: SurfaceOptions | None = None) -> dict[str, Any]:
    """``nnUNetv2_evaluate_simple``: the given labels; file ending and reader taken from the first reference file.

    ``output_file`` defaults to ``pred_folder/summary.json``.
    """
    from nnseg.raw.image_io import determine_io

    ending = _ending_of(Path(ref_folder))
    example = Path(ref_folder) / list_files(ref_folder, ending)[0]
    return evaluate_folder(ref_folder, pred_folder, labels_or_regions=list(labels), file_ending=ending,
                           io=determine_io(ending, example), ignore_label=ignore_label,
                           output_file=Path(pred_folder) / "summary.json" if output_file is None else output_file,
                           num_processes=num_processes, chill=chill, surface_metrics=surface_metrics)
