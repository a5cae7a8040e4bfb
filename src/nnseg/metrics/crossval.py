"""Cross-validation results of a trained model: collect every fold's validation predictions, evaluate them, and
ensemble the cross-validation probabilities of two models (nnU-Net's ``accumulate_cv_results`` and
``ensemble_crossvalidations``).

Layout (as nnU-Net): ``<model>/fold_<k>/validation/CASE<ending>`` (+ ``CASE.npz`` / ``CASE.pkl`` with ``--npz``) →
``<model>/crossval_results_folds_<k_k...>/`` with the segmentations, ``summary.json``, ``dataset.json`` and
``plans.json``; ensembles go to ``<results>/DatasetX/ensembles/ensemble___<modelA>___<modelB>___<folds>/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnseg._types import PathLike
from nnseg.metrics.evaluate import DEFAULT_NUM_PROCESSES, evaluate_folder, list_files
from nnseg.parallel import spawn_map


def folds_to_string(folds: Sequence[int | str]) -> str:
    """``(0, 1, 2)`` -> ``"0_1_2"`` (nnU-Net's ``folds_tuple_to_string``)."""
    if not folds:
        raise ValueError("no folds given; pass e.g. folds=(0, 1, 2, 3, 4)")
    return "_".join(str(f) for f in folds)


def crossval_folder_name(folds: Sequence[int | str]) -> str:
    return f"crossval_results_folds_{folds_to_string(folds)}"


def ensemble_name(model_folder_a: PathLike, model_folder_b: PathLike, folds: Sequence[int | str]) -> str:
    """``ensemble___<T__P__C>___<T__P__C>___<folds>`` (nnU-Net's ``get_ensemble_name``)."""
    return f"ensemble___{Path(model_folder_a).name}___{Path(model_folder_b).name}___{folds_to_string(folds)}"


def reference_folder(dataset_name: str, *, preprocessed_root: PathLike, raw_root: PathLike | None = None) -> Path:
    """The ground truth for cross-validation: ``nnUNet_preprocessed/DatasetX/gt_segmentations``, else
    ``nnUNet_raw/DatasetX/labelsTr``.

    Raises:
        FileNotFoundError: neither exists (the message says how to create them).
    """
    candidates = [Path(preprocessed_root) / dataset_name / "gt_segmentations"]
    if raw_root is not None:
        candidates.append(Path(raw_root) / dataset_name / "labelsTr")
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"no reference segmentations for {dataset_name}: looked in {[str(c) for c in candidates]}; "
                            "run nnUNetv2_plan_and_preprocess (it copies labelsTr to gt_segmentations)")


def _load_model_files(model_folder: Path) -> tuple[Any, Any]:
    from nnseg.plans.schema import load_plans
    from nnseg.raw.dataset_json import load_dataset_json

    for name in ("dataset.json", "plans.json"):
        if not (model_folder / name).is_file():
            raise FileNotFoundError(f"{model_folder / name} is missing; a trained model folder holds the dataset.json and "
                                    "plans.json its training copied; train this model first (nnUNetv2_train)")
    return load_dataset_json(model_folder / "dataset.json"), load_plans(model_folder / "plans.json")


def _validation_folder(model_folder: Path, fold: int | str) -> Path:
    folder = model_folder / f"fold_{fold}" / "validation"
    if not folder.is_dir():
        parts = model_folder.name.split("__")
        hint = (f"nnUNetv2_train {model_folder.parent.name} {parts[2]} {fold} -tr {parts[0]} -p {parts[1]} --npz"
                if len(parts) == 3 else f"nnUNetv2_train DATASET CONFIGURATION {fold} --npz")
        raise FileNotFoundError(f"fold {fold} of model {model_folder} has no validation folder ({folder}); train it "
                                f"first: {hint} (or add --val to validate a finished training)")
    return folder


def validation_files(model_folder: PathLike, folds: Sequence[int | str], suffix: str) -> dict[str, Path]:
    """Every ``fold_k/validation/*<suffix>`` file of the model by file name.

    Raises:
        FileNotFoundError: a fold has no validation folder.
        ValueError: a case is predicted by more than one fold (the folds overlap).
    """
    out: dict[str, Path] = {}
    for fold in folds:
        folder = _validation_folder(Path(model_folder), fold)
        for name in list_files(folder, suffix):
            if name in out:
                raise ValueError(f"case {name} is predicted in more than one fold of {model_folder} ({out[name].parent} "
                                 f"and {folder}); folds must not overlap: check splits_final.json and the -f folds")
            out[name] = folder / name
    return out


def accumulate_crossval_results(trained_model_folder: PathLike, *, folds: Sequence[int | str], ref_folder: PathLike,
                                output_folder: PathLike | None = None, num_processes: int = DEFAULT_NUM_PROCESSES,
                                overwrite: bool = True) -> Path:
    """Copy every fold's validation segmentations into one folder and evaluate them (``summary.json``).

    Args:
        trained_model_folder: ``nnUNet_results/DatasetX/<Trainer>__<Plans>__<configuration>``.
        folds: the folds to collect.
        ref_folder: reference segmentations (:func:`reference_folder`).
        output_folder: default ``<model>/crossval_results_folds_<folds>``; an explicit folder must be empty.
        overwrite: rebuild the folder (default); False keeps files already there and re-evaluates only when
            something was added (nnU-Net's ``--no_overwrite``).

    Returns:
        The merged folder.
    """
    model = Path(trained_model_folder)
    spec, _ = _load_model_files(model)
    sources = validation_files(model, folds, spec.file_ending)
    if not sources:
        raise FileNotFoundError(f"no validation predictions ending with {spec.file_ending!r} in folds {list(folds)} of "
                                f"{model}; run the final validation (nnUNetv2_train ... --val)")
    if output_folder is not None and Path(output_folder).is_dir() and any(Path(output_folder).iterdir()):
        raise FileExistsError(f"output folder {output_folder} is not empty; give an empty or new folder (-o)")
    merged = model / crossval_folder_name(folds) if output_folder is None else Path(output_folder)
    if overwrite and merged.exists():
        shutil.rmtree(merged)
    merged.mkdir(parents=True, exist_ok=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy2(model / name, merged / name)
    copied = False
    for name, source in sources.items():
        if overwrite or not (merged / name).is_file():
            shutil.copy2(source, merged / name)
            copied = True
    if copied or not (merged / "summary.json").is_file():
        evaluate_folder_like_model(merged, ref_folder, spec=spec, num_processes=num_processes)
    return merged


def evaluate_folder_like_model(pred_folder: PathLike, ref_folder: PathLike, *, spec: Any,
                               num_processes: int = DEFAULT_NUM_PROCESSES) -> dict[str, Any]:
    """Evaluate a folder with the labels/regions of ``spec`` (chill: only the predicted cases) into its summary.json."""
    from nnseg.plans.schema import load_plans

    io = load_plans(Path(pred_folder) / "plans.json").image_reader_writer
    return evaluate_folder(ref_folder, pred_folder, labels_or_regions=spec.foreground_labels_or_regions,
                           file_ending=spec.file_ending, io=io, ignore_label=spec.ignore_values or None,
                           output_file=Path(pred_folder) / "summary.json", num_processes=num_processes, chill=True)


def _ensemble_case(job: tuple[list[str], str, Any, Any]) -> None:
    """Average the ``.npz`` probabilities of one case, convert them to labels and write them (spawn worker)."""
    import torch

    from nnseg.predictions.export.from_logits import probabilities_to_segmentation, write_outputs
    from nnseg.predictions.export.predict_io import load_probabilities_npz, load_properties_pkl

    npz_files, output_truncated, plans, spec = job
    total = load_probabilities_npz(npz_files[0])
    for path in npz_files[1:]:
        total += load_probabilities_npz(path)
    total /= np.float32(len(npz_files))
    properties = load_properties_pkl(npz_files[0][:-4] + ".pkl")
    seg = probabilities_to_segmentation(torch.from_numpy(total), spec).numpy()
    write_outputs(seg, None, properties, Path(output_truncated), plans=plans, spec=spec)


def _npz_per_model(model_folders: Sequence[Path], folds: Sequence[int | str]) -> list[dict[str, Path]]:
    per_model = []
    for model in model_folders:
        files = validation_files(model, folds, ".npz")
        if not files:
            raise FileNotFoundError(f"no CASE.npz probabilities in the validation folders of {model} (folds {list(folds)}); "
                                    "ensembling needs them: train with --npz, or rerun the validation with --val --npz")
        per_model.append(files)
    for model, files in zip(model_folders[1:], per_model[1:]):
        if set(files) != set(per_model[0]):
            diff = sorted(set(files) ^ set(per_model[0]))
            raise ValueError(f"{model} and {model_folders[0]} hold cross-validation probabilities of different cases "
                             f"(e.g. {diff[:5]}); both models must be trained on the same folds with --npz")
    return per_model


def ensemble_crossvalidations(model_folders: Sequence[PathLike], output_folder: PathLike, *,
                              folds: Sequence[int | str], num_processes: int = DEFAULT_NUM_PROCESSES,
                              overwrite: bool = True) -> list[str]:
    """Average the cross-validation probabilities of several models case by case and write the segmentations.

    The label maps are written with the first model's plans (reader/writer) and dataset.json (argmax, or regions
    painted in ``regions_class_order``), with the geometry of the first model's ``CASE.pkl``; its ``plans.json`` and
    ``dataset.json`` are copied to ``output_folder``.

    Returns:
        The case identifiers written (without file ending).
    """
    models = [Path(m) for m in model_folders]
    if len(models) < 2:
        raise ValueError(f"ensembling needs at least two models, got {[str(m) for m in models]}")
    spec, plans = _load_model_files(models[0])
    per_model = _npz_per_model(models, folds)
    output = Path(output_folder)
    output.mkdir(parents=True, exist_ok=True)
    identifiers = sorted(name[:-4] for name in per_model[0])
    jobs = [([str(files[f"{i}.npz"]) for files in per_model], str(output / i), plans, spec) for i in identifiers
            if overwrite or not (output / f"{i}{spec.file_ending}").is_file()]
    spawn_map(_ensemble_case, jobs, num_processes=num_processes)
    for name in ("dataset.json", "plans.json"):
        shutil.copy2(models[0] / name, output / name)
    return identifiers
