"""One request, one run: :class:`PredictRequest` + :func:`run_prediction` (as ``launch`` has ``TrainRequest`` +
``run_training``).

A request names the model, the inputs (a folder of ``CASE_XXXX<ending>`` files, a DICOM folder/DICOMDIR/zip, one
list of channel files per case, a DICOMweb study, or images held in memory), the output (a folder, or the arrays
returned) and the :class:`~nnseg.predictions.inference.options.PredictOptions`. :meth:`PredictRequest.check` holds every rule
on how these combine (one input; an output folder for files, none for arrays; what DICOM input allows); it runs once,
before any model is loaded or anything written, and :func:`run_prediction` then runs the one flow for that input
(input checks, memory plan, output lock, progress). ``nnUNetv2_predict``/``nnseg predict`` build a request from
their arguments and call this; the cluster (:func:`nnseg.cluster.predict.predict_on_cluster`) takes the same request.

Example:
    >>> run_prediction(PredictRequest(model="nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres",
    ...                               input_folder="imagesTs", output="out",
    ...                               options=PredictOptions(folds=(0,), device="cpu")))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from nnseg._types import Geometry, PathLike
from nnseg.predictions.inference.options import PredictOptions
from nnseg.predictions.run.predict import loaded_predictor, predict, predict_arrays
from nnseg.predictions.inference.predictor import PredictionReport, Predictor

__all__ = ["DicomWebSource", "OUTPUT_FORMATS", "PredictRequest", "PredictResult", "run_prediction"]

OUTPUT_FORMATS = ("nifti", "dicom-seg")
#: :class:`PredictionReport` (folders, files, arrays in ``results``), or the DICOM / DICOMweb reports.
PredictResult = Union[PredictionReport, Any]


@dataclass(frozen=True)
class DicomWebSource:
    """A study on a DICOMweb server (``limits``: a :class:`~nnseg.predictions.dicom.dicomweb_multipart.DicomWebLimits`)."""

    url: str
    study: str | None
    series: tuple[str, ...] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    limits: Any = None


@dataclass(frozen=True, eq=False)
class PredictRequest:
    """Everything one prediction run needs (checked by :meth:`check`).

    Attributes:
        model: ``nnUNet_results/DatasetX/<Trainer>__<Plans>__<config>`` or a loaded
            :class:`~nnseg.predictions.inference.predictor.Predictor`.
        input_folder: a folder of ``CASE_XXXX<ending>`` files, or DICOM (a folder, DICOMDIR tree or zip; one case per
            series), or ``files``: one list of channel files per case, or ``arrays`` + ``geometries``: raw images
            ``(C, X, Y, Z)`` in memory, or ``dicomweb``: a study on a DICOMweb server. Exactly one.
        output: the output folder (None for ``arrays``: the label maps come back in the report's ``results``).
        options: how to predict (:class:`~nnseg.predictions.inference.options.PredictOptions`).
        output_format: ``nifti`` (the model's file ending) or ``dicom-seg`` (DICOM input only).
        seg_codes: JSON file of SNOMED-CT codes per label (DICOM SEG output).
        save_probabilities: also write ``CASE.npz`` + ``CASE.pkl``; with ``arrays``: return ``(seg, probabilities)``.
        continue_prediction, num_parts, part_id, prev_stage_predictions, num_readers, num_writers, verbose, progress:
            as ``nnUNetv2_predict``'s ``--continue_prediction``, ``-num_parts``, ``-part_id``,
            ``-prev_stage_predictions``, ``-npp``, ``-nps``, ``--verbose``, progress bar.
        prev_stage_segmentations: cascade with ``arrays``: the previous stage's label maps ``(1, X, Y, Z)``.
        slab_rows: force the bounded path with this many rows per export slab (testing, tuning).
    """

    model: PathLike | Predictor
    input_folder: PathLike | None = None
    files: Sequence[Sequence[PathLike]] | None = None
    arrays: Sequence[np.ndarray] | None = None
    geometries: Sequence[Geometry] | None = None
    dicomweb: DicomWebSource | None = None
    output: PathLike | None = None
    options: PredictOptions = field(default_factory=PredictOptions)
    output_format: str = "nifti"
    seg_codes: PathLike | None = None
    save_probabilities: bool = False
    continue_prediction: bool = False
    num_parts: int = 1
    part_id: int = 0
    prev_stage_predictions: PathLike | None = None
    prev_stage_segmentations: Sequence[np.ndarray] | None = None
    num_readers: int = 3
    num_writers: int = 3
    verbose: bool = False
    progress: bool = True
    slab_rows: int | None = None

    @property
    def kind(self) -> str:
        """``folder``, ``dicom``, ``files``, ``arrays`` or ``dicomweb`` (after :meth:`check`)."""
        if self.dicomweb is not None:
            return "dicomweb"
        if self.arrays is not None:
            return "arrays"
        if self.files is not None:
            return "files"
        return "dicom" if self.output_format == "dicom-seg" or _is_dicom(Path(str(self.input_folder))) else "folder"

    def check(self) -> None:
        """Every rule on how the request's fields combine, before anything is loaded or written.

        Raises:
            ValueError / FileNotFoundError naming the field (and its command-line flag) and the fix.
        """
        given = [n for n in ("input_folder", "files", "arrays", "dicomweb") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("-i INPUT_FOLDER is required (or --dicomweb URL --study UID)" if not given else
                             f"give one input, not {given} (input_folder, files, arrays or dicomweb)")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {self.output_format!r}; use one of {OUTPUT_FORMATS}")
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise ValueError(f"part_id must be in [0, num_parts); got num_parts={self.num_parts}, "
                             f"part_id={self.part_id}")
        if self.slab_rows is not None and self.slab_rows < 1:
            raise ValueError(f"slab_rows must be >= 1, got {self.slab_rows}")
        if self.arrays is not None:
            _check_arrays(self)
            return
        if self.output is None:
            raise ValueError("an output folder is required (-o); only images held in memory (arrays) come back "
                             "without one")
        if self.input_folder is not None and not Path(self.input_folder).exists():
            what = "DICOM input" if self.output_format == "dicom-seg" else "input folder"
            raise FileNotFoundError(f"{what} {self.input_folder} does not exist (-i)")
        if self.kind in ("dicom", "dicomweb"):
            _check_dicom(self)
        elif self.input_folder is not None and not Path(self.input_folder).is_dir():
            raise FileNotFoundError(f"input folder {self.input_folder} does not exist (-i)")


def _is_dicom(path: Path) -> bool:
    if not path.exists():
        return False
    from nnseg.raw.dicom.files import looks_like_dicom_input

    return looks_like_dicom_input(path)


def _check_arrays(request: PredictRequest) -> None:
    if request.output is not None:
        raise ValueError("images held in memory (arrays) come back as arrays; leave output unset, or write the "
                         "images to files and give input_folder")
    if request.geometries is None or len(request.geometries) != len(request.arrays or ()):
        n = None if request.geometries is None else len(request.geometries)
        raise ValueError(f"got {len(request.arrays or ())} images but {n} geometries; pass one Geometry per image")
    if request.output_format != "nifti" or request.continue_prediction or request.prev_stage_predictions is not None:
        raise ValueError("output_format, continue_prediction and prev_stage_predictions apply to files; with arrays "
                         "pass prev_stage_segmentations for a cascade")


def _check_dicom(request: PredictRequest) -> None:
    if request.dicomweb is not None and not request.dicomweb.study:
        raise ValueError("--dicomweb needs --study STUDY_INSTANCE_UID")
    if request.save_probabilities or request.prev_stage_predictions:
        raise ValueError("--save_probabilities and -prev_stage_predictions are not supported with DICOM input; "
                         "convert the series with convert-dicom and predict the NIfTI files instead")


def run_prediction(request: PredictRequest) -> PredictResult:
    """Check ``request`` (:meth:`PredictRequest.check`), then run it: every case through the checks, the memory
    plan (bounded path when a case does not fit in one piece), the output lock and the progress bars.

    Returns:
        A :class:`~nnseg.predictions.inference.predictor.PredictionReport` (``results``: per image the label map, or
        ``(seg, probabilities)``, for ``arrays``), a ``DicomPredictionReport`` for DICOM input, a ``DicomWebReport``
        for a DICOMweb study.

    Raises:
        ValueError / FileNotFoundError: a bad request or a refused case (nothing written);
        nnseg.predictions.inference.memory_plan.CaseDoesNotFit: a case exceeds the memory budget even in bounded memory.
    """
    request.check()
    kind = request.kind
    if kind == "arrays":
        results = predict_arrays(request.model, list(request.arrays or ()), list(request.geometries or ()),
                                 request.options, return_probabilities=request.save_probabilities,
                                 prev_stage_segmentations=request.prev_stage_segmentations,
                                 slab_rows=request.slab_rows)
        return PredictionReport(results=results)
    if kind in ("dicom", "dicomweb"):
        return _run_dicom(request)
    inputs = request.files if kind == "files" else request.input_folder
    return predict(request.model, inputs, request.output, request.options,  # type: ignore[arg-type]
                   save_probabilities=request.save_probabilities,
                   num_processes_preprocessing=request.num_readers, num_processes_export=request.num_writers,
                   continue_prediction=request.continue_prediction, num_parts=request.num_parts,
                   part_id=request.part_id, prev_stage_predictions=request.prev_stage_predictions,
                   verbose=request.verbose, progress=request.progress, slab_rows=request.slab_rows)


def _run_dicom(request: PredictRequest) -> Any:
    """DICOM folder/zip or DICOMweb study: series checked, then predicted through the same per-case flow."""
    predictor, _ = loaded_predictor(request.model, request.options)
    web = request.dicomweb
    if web is not None:
        from nnseg.predictions.dicom.dicomweb import predict_dicomweb
        from nnseg.predictions.dicom.dicomweb_multipart import DicomWebLimits

        return predict_dicomweb(predictor, web.url, str(web.study), Path(str(request.output)),
                                series=None if web.series is None else list(web.series), headers=dict(web.headers),
                                seg_codes=request.seg_codes, limits=web.limits or DicomWebLimits())
    from nnseg.predictions.dicom.dicom_predict import predict_dicom

    return predict_dicom(predictor, Path(str(request.input_folder)), Path(str(request.output)),
                         output_format=request.output_format, seg_codes=request.seg_codes,
                         continue_prediction=request.continue_prediction, num_parts=request.num_parts,
                         part_id=request.part_id, num_processes_preprocessing=request.num_readers,
                         num_processes_export=request.num_writers, verbose=request.verbose,
                         progress=request.progress)
