"""Predict with a trained nnU-Net v2 / nnseg model: Python API behind ``nnUNetv2_predict``.

:class:`Predictor` holds one model (plans, dataset.json, one network per fold) on a device and turns preprocessed
arrays into logits: sliding window with Gaussian weighting, mirroring TTA, folds averaged as nnU-Net does (logits
summed, then divided), autocast in the chosen precision. :func:`predict` runs a folder of images end to end
(:mod:`nnseg.predictions.pipeline` overlaps reading and writing with the network); :func:`predict_arrays` does the
same for images already in memory.

Example:
    >>> predict("results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres", "imagesTs", "out",
    ...         folds=(0,), device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg._types import Geometry, PathLike
from nnseg.predictions.bounded import MemoryPolicy, check_cases_fit
from nnseg.predictions.export import convert_logits
from nnseg.predictions.model_folder import DEFAULT_FOLDS, Fold
from nnseg.predictions.pipeline import locked_output, run_pipeline, select_cases, write_run_info
from nnseg.predictions.predictor import CaseTiming, PredictionReport, Predictor, resolve_device

__all__ = ["CaseTiming", "PredictionReport", "Predictor", "predict", "predict_arrays", "resolve_device"]


def predict(model_folder: PathLike | Predictor, inputs: PathLike | Sequence[Sequence[PathLike]], output: PathLike, *,
            folds: Sequence[Fold] | None = DEFAULT_FOLDS, checkpoint: str = "checkpoint_final.pth", step_size: float = 0.5,
            use_tta: bool = True, save_probabilities: bool = False, device: str | torch.device | None = None,
            precision: str | None = None, tile_batch_size: int | None = None, num_processes_preprocessing: int = 3,
            num_processes_export: int = 3, continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0,
            prev_stage_predictions: PathLike | None = None, accumulate_on_device: bool = True, verbose: bool = False,
            progress: bool = True, max_memory_gb: float | None = None, slab_rows: int | None = None) -> PredictionReport:
    """Predict every case of ``inputs`` and write ``output/CASE<file_ending>`` (nnU-Net's ``predict_from_files``).

    Args:
        model_folder: ``nnUNet_results/DatasetX/<Trainer>__<Plans>__<config>`` or a loaded :class:`Predictor`.
        inputs: a folder of ``CASE_XXXX<ending>`` files, or one list of channel files per case.
        output: output folder (created; gets ``dataset.json``, ``plans.json``, ``predict_from_raw_data_args.json``).
        folds, checkpoint, step_size, use_tta, device, precision, tile_batch_size, accumulate_on_device:
            see :meth:`Predictor.from_model_folder` (``precision=None``: bf16/fp16 autocast where the device has it).
        save_probabilities: also write ``CASE.npz`` (``probabilities``) and ``CASE.pkl``.
        num_processes_preprocessing, num_processes_export: background reader / writer threads (0: sequential).
        continue_prediction: skip cases whose outputs exist.
        num_parts, part_id: predict only cases ``sorted_cases[part_id::num_parts]``.
        prev_stage_predictions: folder with the previous stage's ``CASE<ending>`` (cascade).
        verbose: print a timing line per case; progress: show a progress bar over cases (and one per large case).
        max_memory_gb: memory budget (None: 85 % of the free RAM, or free GPU memory); a case whose one-shot
            estimate exceeds it is predicted in bounded memory, one that cannot fit even so is refused before anything
            is written (:mod:`nnseg.predictions.memory_plan`).
        slab_rows: force the bounded path with this many output rows per export slab (testing, tuning).

    Returns:
        A :class:`PredictionReport`.

    Raises:
        nnseg.predictions.memory_plan.CaseDoesNotFit: a case exceeds ``max_memory_gb`` (nothing written).
    """
    start = time.perf_counter()
    predictor = model_folder if isinstance(model_folder, Predictor) else Predictor.from_model_folder(
        model_folder, folds=folds, checkpoint=checkpoint, device=device, precision=precision, step_size=step_size,
        use_tta=use_tta, tile_batch_size=tile_batch_size, accumulate_on_device=accumulate_on_device,
        max_memory_gb=max_memory_gb)
    if max_memory_gb is not None:
        predictor.max_memory_gb = max_memory_gb
    cases = select_cases(predictor.model, inputs, num_parts=num_parts, part_id=part_id)
    memory = MemoryPolicy.create(predictor, max_memory_gb=max_memory_gb, slab_rows=slab_rows,
                                 save_probabilities=save_probabilities)
    check_cases_fit(predictor, cases, memory)
    source = str(inputs) if isinstance(inputs, (str, Path)) else [[str(f) for f in c] for c in inputs]
    args = {"list_of_lists_or_source_folder": source,
            "output_folder_or_list_of_truncated_output_files": str(output), "save_probabilities": save_probabilities,
            "overwrite": not continue_prediction, "num_processes_preprocessing": num_processes_preprocessing,
            "num_processes_segmentation_export": num_processes_export,
            "folder_with_segs_from_prev_stage": None if prev_stage_predictions is None else str(prev_stage_predictions),
            "num_parts": num_parts, "part_id": part_id, "folds": predictor.folds, "device": str(predictor.device),
            "precision": predictor.precision, "use_mirroring": predictor.use_tta, "tile_step_size": predictor.step_size}
    with locked_output(cases, output, num_parts=num_parts, part_id=part_id) as out:
        write_run_info(predictor.model, out, args)
        report = run_pipeline(predictor, cases, out, save_probabilities=save_probabilities,
                              continue_prediction=continue_prediction, prev_stage_folder=prev_stage_predictions,
                              num_readers=num_processes_preprocessing, num_writers=num_processes_export,
                              verbose=verbose, progress=progress, memory=memory)
    report.wall_s = time.perf_counter() - start
    return report


def predict_arrays(model_folder: PathLike | Predictor, images: Sequence[np.ndarray], geometries: Sequence[Geometry], *,
                   folds: Sequence[Fold] | None = DEFAULT_FOLDS, checkpoint: str = "checkpoint_final.pth",
                   step_size: float = 0.5, use_tta: bool = True, device: str | torch.device | None = None,
                   precision: str | None = None, tile_batch_size: int | None = None, return_probabilities: bool = False,
                   prev_stage_segmentations: Sequence[np.ndarray] | None = None) -> list[Any]:
    """Predict images held in memory (nnU-Net's ``predict_from_list_of_npy_arrays``).

    Args:
        images: raw images float ``(C, X, Y, Z)``, one per case, as a reader returns them.
        geometries: the :class:`Geometry` of each image (its ``spacing`` drives preprocessing).
        prev_stage_segmentations: cascade only: the previous stage's label maps ``(1, X, Y, Z)``.
        return_probabilities: return ``(seg, probabilities)`` pairs instead of segmentations.

    Returns:
        Per case the label map ``(X, Y, Z)`` (uint8 below 255 labels), or ``(seg, float32 (K, X, Y, Z))``.
    """
    if len(images) != len(geometries):
        raise ValueError(f"got {len(images)} images but {len(geometries)} geometries; pass one Geometry per image")
    predictor = model_folder if isinstance(model_folder, Predictor) else Predictor.from_model_folder(
        model_folder, folds=folds, checkpoint=checkpoint, device=device, precision=precision, step_size=step_size,
        use_tta=use_tta, tile_batch_size=tile_batch_size)
    out: list[Any] = []
    for i, (image, geometry) in enumerate(zip(images, geometries)):
        prev = prev_stage_segmentations[i] if prev_stage_segmentations is not None else None
        data, props = predictor.preprocess(np.asarray(image, dtype=np.float32), geometry, prev)
        logits = predictor.predict_logits(data)
        seg, probs = convert_logits(logits, props, plans=predictor.model.plans, configuration=predictor.model.configuration,
                                    spec=predictor.model.spec, return_probabilities=return_probabilities)
        out.append((seg, probs) if return_probabilities else seg)
    return out
