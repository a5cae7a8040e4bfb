"""Predict with a trained nnU-Net v2 / nnseg model: Python API behind ``nnUNetv2_predict``.

:class:`Predictor` holds one model (plans, dataset.json, one network per fold) on a device and turns preprocessed
arrays into logits: sliding window with Gaussian weighting, mirroring TTA, folds averaged as nnU-Net does (logits
summed, then divided), autocast in the chosen precision. :func:`predict` runs a folder of images end to end
(:mod:`nnseg.predictions.run.pipeline` overlaps reading and writing with the network); :func:`predict_arrays` does the
same for images already in memory.

The options (folds, device, precision, TTA, memory budget, ...) are a
:class:`~nnseg.predictions.inference.options.PredictOptions`; keyword arguments named like its fields change them. Both functions
are what :func:`nnseg.predictions.request.run_prediction` runs for a folder/file lists and for arrays.

Example:
    >>> predict("results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres", "imagesTs", "out",
    ...         folds=(0,), device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnseg._types import Geometry, PathLike
from nnseg.predictions.run.bounded import MemoryPolicy, check_cases_fit
from nnseg.predictions.inference.onnx_backend import load_predictor
from nnseg.predictions.inference.options import PredictOptions
from nnseg.predictions.run.array_case import check_array_case, predict_array_case
from nnseg.predictions.run.pipeline import locked_output, run_args, run_pipeline, select_cases, write_run_info
from nnseg.predictions.inference.predictor import CaseTiming, PredictionReport, Predictor, resolve_device

__all__ = ["CaseTiming", "PredictionReport", "PredictOptions", "Predictor", "loaded_predictor", "predict",
           "predict_arrays", "resolve_device"]


def loaded_predictor(model: PathLike | Predictor, options: PredictOptions | None = None,
                     **changes: Any) -> tuple[Predictor, PredictOptions]:
    """``model`` loaded with ``options`` (a loaded :class:`Predictor` is used as it is, taking only the memory budget),
    and the options in force (``changes``: :class:`PredictOptions` fields applied to ``options``)."""
    opts = (options or PredictOptions()).replace(**changes) if changes else (options or PredictOptions())
    if isinstance(model, Predictor):
        if opts.max_memory_gb is not None:
            model.max_memory_gb = opts.max_memory_gb
        return model, opts
    return load_predictor(model, opts), opts


def predict(model_folder: PathLike | Predictor, inputs: PathLike | Sequence[Sequence[PathLike]], output: PathLike,
            options: PredictOptions | None = None, *, save_probabilities: bool = False,
            num_processes_preprocessing: int = 3, num_processes_export: int = 3, continue_prediction: bool = False,
            num_parts: int = 1, part_id: int = 0, prev_stage_predictions: PathLike | None = None, verbose: bool = False,
            progress: bool = True, slab_rows: int | None = None, **option_changes: Any) -> PredictionReport:
    """Predict every case of ``inputs`` and write ``output/CASE<file_ending>`` (nnU-Net's ``predict_from_files``).

    Args:
        model_folder: ``nnUNet_results/DatasetX/<Trainer>__<Plans>__<config>`` or a loaded :class:`Predictor`.
        inputs: a folder of ``CASE_XXXX<ending>`` files, or one list of channel files per case.
        output: output folder (created; gets ``dataset.json``, ``plans.json``, ``predict_from_raw_data_args.json``).
        options: how to predict (:class:`~nnseg.predictions.inference.options.PredictOptions`: folds, checkpoint, device,
            precision, step size, TTA, tile batch, accumulator, backend, memory budget); ``option_changes`` named
            like its fields change it (``folds=(0,), device="cpu"``).
        save_probabilities: also write ``CASE.npz`` (``probabilities``) and ``CASE.pkl``.
        num_processes_preprocessing, num_processes_export: background reader / writer threads (0: sequential).
        continue_prediction: skip cases whose outputs exist.
        num_parts, part_id: predict only cases ``sorted_cases[part_id::num_parts]``.
        prev_stage_predictions: folder with the previous stage's ``CASE<ending>`` (cascade).
        verbose: print a timing line per case; progress: show a progress bar over cases (and one per large case).
        slab_rows: force the bounded path with this many output rows per export slab (testing, tuning).

    The memory budget (``max_memory_gb``; None: 85 % of the free RAM, or free GPU memory): a case whose one-shot
    estimate exceeds it is predicted in bounded memory, one that cannot fit even so is refused before anything is
    written (:mod:`nnseg.predictions.inference.memory_plan`).

    Raises:
        nnseg.predictions.inference.memory_plan.CaseDoesNotFit: a case exceeds the budget (nothing written).
    """
    start = time.perf_counter()
    predictor, opts = loaded_predictor(model_folder, options, **option_changes)
    cases = select_cases(predictor.model, inputs, num_parts=num_parts, part_id=part_id)
    memory = MemoryPolicy.create(predictor, max_memory_gb=opts.max_memory_gb, slab_rows=slab_rows,
                                 save_probabilities=save_probabilities)
    check_cases_fit(predictor, cases, memory)
    args = run_args(inputs, output, save_probabilities=save_probabilities, continue_prediction=continue_prediction,
                    num_readers=num_processes_preprocessing, num_writers=num_processes_export,
                    prev_stage_predictions=prev_stage_predictions, num_parts=num_parts, part_id=part_id,
                    folds=predictor.folds, device=str(predictor.device), precision=predictor.precision,
                    use_tta=predictor.use_tta, step_size=predictor.step_size)
    with locked_output(cases, output, num_parts=num_parts, part_id=part_id) as out:
        write_run_info(predictor.model, out, args)
        report = run_pipeline(predictor, cases, out, save_probabilities=save_probabilities,
                              continue_prediction=continue_prediction, prev_stage_folder=prev_stage_predictions,
                              num_readers=num_processes_preprocessing, num_writers=num_processes_export,
                              verbose=verbose, progress=progress, memory=memory)
    report.wall_s = time.perf_counter() - start
    return report


def predict_arrays(model_folder: PathLike | Predictor, images: Sequence[np.ndarray], geometries: Sequence[Geometry],
                   options: PredictOptions | None = None, *, return_probabilities: bool = False,
                   prev_stage_segmentations: Sequence[np.ndarray] | None = None, slab_rows: int | None = None,
                   **option_changes: Any) -> list[Any]:
    """Predict images held in memory (nnU-Net's ``predict_from_list_of_npy_arrays``), with the checks and the memory
    plan of :func:`predict`: every image is checked (channels, 2D vs 3D, resampling, NaN/inf voxels, the memory
    budget) before any is predicted; one whose one-shot estimate exceeds the budget is predicted in bounded memory.

    Args:
        images: raw images float ``(C, X, Y, Z)``, one per case, as a reader returns them.
        geometries: the :class:`Geometry` of each image (its ``spacing`` drives preprocessing).
        options, option_changes: as for :func:`predict`.
        prev_stage_segmentations: cascade only: the previous stage's label maps ``(1, X, Y, Z)``.
        return_probabilities: return ``(seg, probabilities)`` pairs instead of segmentations.
        slab_rows: force the bounded path with this many output rows per export slab (testing, tuning).

    Returns:
        Per case the label map ``(X, Y, Z)`` (uint8 below 255 labels), or ``(seg, float32 (K, X, Y, Z))``.

    Raises:
        ValueError: a refused image (``image I`` named, with the fix). CaseDoesNotFit: an image exceeds the budget
        (or needs the bounded path while its probabilities are asked for).
    """
    if len(images) != len(geometries):
        raise ValueError(f"got {len(images)} images but {len(geometries)} geometries; pass one Geometry per image")
    if prev_stage_segmentations is not None and len(prev_stage_segmentations) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prev_stage_segmentations)} previous-stage segmentations")
    predictor, opts = loaded_predictor(model_folder, options, **option_changes)
    memory = MemoryPolicy.create(predictor, max_memory_gb=opts.max_memory_gb, slab_rows=slab_rows)
    names = [f"image {i}" for i in range(len(images))]
    for name, image, geometry in zip(names, images, geometries):
        check_array_case(predictor, image, geometry, name=name, memory=memory)
    return [predict_array_case(predictor, image, geometry, name=name, memory=memory,
                               prev_stage=None if prev_stage_segmentations is None else prev_stage_segmentations[i],
                               return_probabilities=return_probabilities)
            for i, (name, image, geometry) in enumerate(zip(names, images, geometries))]
