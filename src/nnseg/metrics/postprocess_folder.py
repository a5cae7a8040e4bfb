"""Postprocessing on folders: determine it on cross-validation predictions, apply it to any prediction folder.

``nnUNetv2_determine_postprocessing`` = :func:`determine_postprocessing_for_folder` (labels, file ending and reader from
the folder's ``dataset.json`` / ``plans.json``), built on the explicit :func:`determine_postprocessing`;
``nnUNetv2_apply_postprocessing`` = :func:`apply_postprocessing_to_folder` (``postprocessing.pkl`` or ``.json``).
The rules are in :mod:`nnseg.metrics.postprocess`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg._types import IgnoreLabels, LabelOrRegion, PathLike
from nnseg.metrics.evaluate import DEFAULT_NUM_PROCESSES, evaluate_folder, list_files
from nnseg.metrics.postprocess import (
    LARGEST_COMPONENT,
    PostprocessingStep,
    all_foreground_labels,
    apply_postprocessing,
    improves_all_foreground,
    improves_label,
    load_postprocessing,
    load_summary,
    save_postprocessing,
)
from nnseg.jsonio import replace_path
from nnseg.parallel import shared_spawn_pool, spawn_map


@dataclass(frozen=True)
class PostprocessingDecision:
    """What :func:`determine_postprocessing` chose: the steps and the summaries before and after them."""

    steps: list[PostprocessingStep]
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class _Eval:
    ref_folder: Path
    labels_or_regions: list[LabelOrRegion]
    file_ending: str
    io: str
    ignore_label: IgnoreLabels
    num_processes: int

    def __call__(self, folder: Path) -> dict[str, Any]:
        evaluate_folder(self.ref_folder, folder, labels_or_regions=self.labels_or_regions, file_ending=self.file_ending,
                        io=self.io, ignore_label=self.ignore_label, output_file=folder / "summary.json",
                        num_processes=self.num_processes, chill=True)
        return load_summary(folder / "summary.json")


def _postprocess_file(job: tuple[str, str, str, list[PostprocessingStep]]) -> None:
    from nnseg.raw.image_io import get_io

    source, target, io_name, steps = job
    io = get_io(io_name)
    seg, geometry = io.read_seg(source)
    io.write_seg(apply_postprocessing(seg[0].astype(int), steps), target, geometry)


def postprocess_files(sources: Sequence[Path], targets: Sequence[Path], steps: Sequence[PostprocessingStep], *,
                      io: str, num_processes: int = DEFAULT_NUM_PROCESSES) -> None:
    """Read each label map, apply ``steps``, write it with ``io`` (spawn pool when ``num_processes > 1``)."""
    jobs = [(str(s), str(t), io, list(steps)) for s, t in zip(sources, targets)]
    for t in targets:
        Path(t).parent.mkdir(parents=True, exist_ok=True)
    spawn_map(_postprocess_file, jobs, num_processes=num_processes)


def _trial(source: Path, target: Path, files: Sequence[str], step: PostprocessingStep, evaluate: _Eval) -> dict[str, Any]:
    if target.exists():
        shutil.rmtree(target)
    postprocess_files([source / f for f in files], [target / f for f in files], [step], io=evaluate.io,
                      num_processes=evaluate.num_processes)
    return evaluate(target)


def _largest_step(labels_or_regions: Any) -> PostprocessingStep:
    return PostprocessingStep(LARGEST_COMPONENT, {"labels_or_regions": labels_or_regions, "background_label": 0})


def _greedy(pred_folder: Path, temp: Path, files: Sequence[str], evaluate: _Eval,
            baseline: dict[str, Any], verbose: bool) -> tuple[list[PostprocessingStep], Path, dict[str, Any]]:
    """nnU-Net's two rules; returns the accepted steps, the folder holding their result and its summary."""
    steps: list[PostprocessingStep] = []
    step = _largest_step(all_foreground_labels(evaluate.labels_or_regions))
    result = _trial(pred_folder, temp / "keep_largest_fg", files, step, evaluate)
    accepted = improves_all_foreground(baseline, result)
    _say(verbose, "all foreground", baseline["foreground_mean"]["Dice"], result["foreground_mean"]["Dice"], accepted)
    source, current = (temp / "keep_largest_fg", result) if accepted else (pred_folder, baseline)
    steps += [step] if accepted else []
    if len(evaluate.labels_or_regions) > 1:
        for label_or_region in evaluate.labels_or_regions:
            step = _largest_step(label_or_region)
            result = _trial(source, temp / "keep_largest_perClassOrRegion", files, step, evaluate)
            accepted = improves_label(current, result, label_or_region)
            _say(verbose, str(label_or_region), current["mean"][label_or_region]["Dice"],
                 result["mean"][label_or_region]["Dice"], accepted)
            if accepted:
                best = temp / "keep_largest_perClassOrRegion_currentBest"
                if best.exists():
                    shutil.rmtree(best)
                replace_path(temp / "keep_largest_perClassOrRegion", best)
                source, current = best, result
                steps.append(step)
    return steps, source, current


def _say(verbose: bool, what: str, before: float, after: float, accepted: bool) -> None:
    if verbose:
        verdict = "kept" if accepted else "rejected"
        print(f"keep largest component of {what}: Dice {before:.5f} -> {after:.5f} ({verdict})")


def determine_postprocessing(pred_folder: PathLike, ref_folder: PathLike, *, labels_or_regions: Sequence[LabelOrRegion],
                             file_ending: str, io: str, ignore_label: IgnoreLabels = None,
                             num_processes: int = DEFAULT_NUM_PROCESSES, keep_postprocessed: bool = True,
                             verbose: bool = True) -> PostprocessingDecision:
    """Choose postprocessing steps for the predictions in ``pred_folder`` by nnU-Net's greedy rules.

    Writes ``pred_folder/postprocessing.json``, ``pred_folder/postprocessing.pkl`` and (unless ``keep_postprocessed``
    is False) ``pred_folder/postprocessed/`` with the postprocessed label maps and their ``summary.json``. An
    existing ``pred_folder/summary.json`` is reused as the baseline (as nnU-Net); otherwise it is computed.

    Args:
        labels_or_regions: what to evaluate and postprocess (``DatasetSpec.foreground_labels_or_regions``).
        file_ending: the segmentation file ending (``.nii.gz``).
        io: reader/writer class name (the plans' ``image_reader_writer``).
        ignore_label: reference value excluded from the metrics.
    """
    pred_folder, ref_folder = Path(pred_folder), Path(ref_folder)
    files = list_files(pred_folder, file_ending)
    if not files:
        raise FileNotFoundError(f"no predictions ending with {file_ending!r} in {pred_folder}")
    missing = sorted(set(list_files(ref_folder, file_ending)) - set(files))
    if missing and verbose:  # expected when not every fold is trained (a one-fold run): a note, not a failure
        print(f"note: postprocessing is chosen on the {len(files)} cases with a cross-validation prediction; "
              f"{len(missing)} of the {len(files) + len(missing)} reference cases have none (folds not trained yet, "
              f"e.g. {missing[0]}). Train every fold to decide on the whole dataset")
    labels = [tuple(r) if isinstance(r, (list, tuple)) else int(r) for r in labels_or_regions]
    evaluate = _Eval(ref_folder, labels, file_ending, io, ignore_label, num_processes)
    output = pred_folder / "postprocessed"
    if output.exists():
        shutil.rmtree(output)
    with shared_spawn_pool(num_processes=num_processes, num_jobs=len(files)):  # one pool for every trial's maps
        summary = pred_folder / "summary.json"
        baseline = load_summary(summary) if summary.is_file() else evaluate(pred_folder)
        steps, source, final = _greedy(pred_folder, output / "temp", files, evaluate, baseline, verbose)
    for name in [*files, "summary.json"]:
        shutil.copy2(source / name, output / name)
    shutil.rmtree(output / "temp")
    save_postprocessing(pred_folder, steps, baseline, final)
    if not keep_postprocessed:
        shutil.rmtree(output)
    return PostprocessingDecision(steps=steps, before=baseline, after=final)


def _spec_and_io(folder: Path, plans_file: PathLike | None, dataset_json_file: PathLike | None) -> tuple[Any, str]:
    from nnseg.plans.schema import load_plans
    from nnseg.raw.dataset_json import load_dataset_json

    plans_path = Path(plans_file) if plans_file is not None else folder / "plans.json"
    dataset_path = Path(dataset_json_file) if dataset_json_file is not None else folder / "dataset.json"
    for path, flag in ((plans_path, "-plans_json"), (dataset_path, "-dataset_json")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; nnUNetv2_predict / nnseg predict write it into the output "
                                    f"folder; for other folders pass {flag} (e.g. a trained model folder's copy)")
    return load_dataset_json(dataset_path), load_plans(plans_path).image_reader_writer


def determine_postprocessing_for_folder(pred_folder: PathLike, ref_folder: PathLike, *, plans_file: PathLike | None = None,
                                        dataset_json_file: PathLike | None = None,
                                        num_processes: int = DEFAULT_NUM_PROCESSES, keep_postprocessed: bool = True,
                                        verbose: bool = True) -> PostprocessingDecision:
    """``nnUNetv2_determine_postprocessing``: labels/regions, ignore label, file ending from ``dataset.json`` and the
    reader from ``plans.json`` (both default to the copies in ``pred_folder``)."""
    spec, io = _spec_and_io(Path(pred_folder), plans_file, dataset_json_file)
    return determine_postprocessing(pred_folder, ref_folder, labels_or_regions=spec.foreground_labels_or_regions,
                                    file_ending=spec.file_ending, io=io, ignore_label=spec.ignore_values or None,
                                    num_processes=num_processes, keep_postprocessed=keep_postprocessed, verbose=verbose)


def apply_postprocessing_to_folder(input_folder: PathLike, output_folder: PathLike,
                                   postprocessing: PathLike | Sequence[PostprocessingStep], *,
                                   plans_file: PathLike | None = None, dataset_json_file: PathLike | None = None,
                                   num_processes: int = DEFAULT_NUM_PROCESSES) -> list[Path]:
    """``nnUNetv2_apply_postprocessing``: postprocess every segmentation of ``input_folder`` into ``output_folder``.

    Args:
        postprocessing: ``postprocessing.json`` / nnU-Net's ``postprocessing.pkl`` path, or the steps themselves.
        plans_file, dataset_json_file: default ``input_folder/plans.json`` / ``dataset.json`` (written by predict and
            ensemble); the file ending comes from dataset.json, the reader/writer from the plans.

    Returns:
        The written files.
    """
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    steps = load_postprocessing(postprocessing) if isinstance(postprocessing, (str, Path)) else list(postprocessing)
    spec, io = _spec_and_io(input_folder, plans_file, dataset_json_file)
    files = list_files(input_folder, spec.file_ending)
    if not files:
        raise FileNotFoundError(f"no segmentations ending with {spec.file_ending!r} in {input_folder}")
    if output_folder.resolve() == input_folder.resolve():
        raise ValueError(f"output folder {output_folder} is the input folder; choose another one (-o)")
    targets = [output_folder / f for f in files]
    postprocess_files([input_folder / f for f in files], targets, steps, io=io, num_processes=num_processes)
    return targets
