"""Predict DICOM series: each image series is one case; output NIfTI (the model's file ending) or DICOM SEG.

A thin layer over :func:`~nnseg.predictions.run.predict.predict`: every series is checked first (nothing is written when
one is broken), converted to a temporary file in the model's format with the series geometry, predicted as usual,
and, for ``dicom-seg``, the label map is written as a SEG on the source slices. Cases are named by
SeriesInstanceUID with ``_`` for ``.`` (``OUT/1_2_840_..._7.dcm`` or ``OUT/1_2_840_..._7<file_ending>``): file names
with dozens of dots would break suffix handling. The UID is checked first (digits and dots, see
:mod:`nnseg.raw.dicom.uids`), so no value read from a file or a server forms a path, and every output path is checked
to stay in its folder. What a SEG needs from its source (:mod:`nnseg.raw.dicom.seg_source`) and whether each series
fits the model (one slice for a 3D model) is checked for every series before anything is predicted; errors of the
prediction name the series, never the temporary file it was converted to.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from nnseg import __version__
from nnseg._types import PathLike
from nnseg.predictions.run.input_checks import check_case_geometry
from nnseg.predictions.run.predict import Predictor, predict
from nnseg.raw.dicom.files import DicomSeries, open_dicom
from nnseg.raw.dicom.seg import Segment, derived_uid, label_names, load_seg_codes, make_segments, write_segmentation
from nnseg.raw.dicom.seg_source import seg_source
from nnseg.raw.dicom.series import read_volume, series_geometry, to_sitk
from nnseg.raw.dicom.uids import inside, uid_file_stem

OUTPUT_FORMATS = ("nifti", "dicom-seg")
VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")


@dataclass
class DicomPredictionReport:
    """Outputs written, series skipped (already done), and notes on the input (objects left out)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class SeriesRefusedError(ValueError):
    """A series that cannot be predicted with this model (the message names the series and what to do)."""


def _stderr(message: str) -> None:
    print(f"nnseg: {message}", file=sys.stderr, flush=True)


def model_key(predictor: Predictor) -> str:
    """What identifies the model in derived SEG UIDs: dataset/model folder names and folds."""
    folder = predictor.model.folder
    return f"{folder.parent.name}/{folder.name}/folds={','.join(str(f) for f in predictor.folds)}"


def seg_uids(source_series_uid: str, predictor: Predictor) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG for a source series: the same on every run of the same model."""
    key = model_key(predictor)
    return derived_uid("nnseg-seg-series", source_series_uid, key), derived_uid("nnseg-seg-sop", source_series_uid, key)


def check_model_for_dicom(predictor: Predictor) -> None:
    """Refuse models that cannot take one DICOM series per case (several channels, 2D image formats)."""
    spec = predictor.model.spec
    if spec.num_channels != 1:
        raise ValueError(f"the model expects {spec.num_channels} channels ({spec.channel_names}); DICOM input gives one "
                         "series per case, so it works with single-channel models only")
    if spec.file_ending.lower() not in VOLUME_ENDINGS:
        raise ValueError(f"the model reads {spec.file_ending} files (2D images); DICOM input needs a model trained on "
                         f"volumes ({', '.join(VOLUME_ENDINGS)})")


def segments_for(predictor: Predictor, seg_codes: PathLike | None) -> list[Segment]:
    """The SEG segments of the model's labels (or regions), with codes from ``seg_codes`` when given."""
    spec = predictor.model.spec
    names = label_names(spec.labels, spec.regions_class_order, ignored=spec.ignore_names)
    codes = load_seg_codes(Path(seg_codes), names) if seg_codes is not None else None
    return make_segments(names, codes)


def case_name(series_uid: str) -> str:
    """The case identifier of a series: its (checked) SeriesInstanceUID with ``_`` for ``.``."""
    return uid_file_stem(series_uid)


def _output_name(series: DicomSeries, output_format: str, ending: str) -> str:
    return f"{case_name(series.uid)}{'.dcm' if output_format == 'dicom-seg' else ending}"


def _write_segs(predictor: Predictor, pending: Sequence[tuple[DicomSeries, tuple[Any, ...]]], predicted: Path,
                output: Path, segments: Sequence[Segment]) -> list[Path]:
    import SimpleITK as sitk

    model = predictor.model
    written = []
    for series, headers in pending:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted / f"{case_name(series.uid)}{model.spec.file_ending}")))
        target = inside(output, f"{case_name(series.uid)}.dcm")
        write_series_seg(predictor, labels, series.uid, headers, segments, target)
        written.append(target)
    return written


def write_series_seg(predictor: Predictor, labels: Any, source_series_uid: str, headers: Sequence[Any],
                     segments: Sequence[Segment], target: Path) -> None:
    """Write a label map ``(slice, row, column)`` as the DICOM SEG of its source series (UIDs fixed per model)."""
    model = predictor.model
    series_uid, sop_uid = seg_uids(source_series_uid, predictor)
    sources = seg_source(headers, source_series_uid).headers
    write_segmentation(labels, sources, segments, target, series_uid=series_uid, sop_uid=sop_uid,
                       description=f"nnseg {model.folder.parent.name} {model.configuration_name}", version=__version__)


def predict_dicom(predictor: Predictor, inputs: PathLike, output: PathLike, *, output_format: str = "nifti",
                  seg_codes: PathLike | None = None, continue_prediction: bool = False, num_parts: int = 1,
                  part_id: int = 0, num_processes_preprocessing: int = 0, num_processes_export: int = 0,
                  verbose: bool = False, progress: bool = True, log: Callable[[str], None] = _stderr,
                  require_series: bool = True) -> DicomPredictionReport:
    """Predict every image series under ``inputs`` (a folder, zip or DICOMDIR tree) into ``output``.

    Args:
        output_format: ``nifti`` (the model's file ending) or ``dicom-seg``.
        seg_codes: JSON file with SNOMED-CT codes per label (see :func:`~nnseg.raw.dicom.seg.load_seg_codes`).
        continue_prediction: skip series whose output exists; num_parts/part_id: shard the sorted series.
        log: receives the notes (objects left out, series skipped).
        require_series: raise when there is no image series (else return an empty report).

    Raises:
        ValueError: an unknown format, an unsuitable model, no image series, or a broken series (named); nothing
            is written then.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; choose one of {OUTPUT_FORMATS}")
    start = time.perf_counter()
    check_model_for_dicom(predictor)
    segments = segments_for(predictor, seg_codes) if output_format == "dicom-seg" else []
    report = DicomPredictionReport()
    output = Path(output)
    with open_dicom(Path(inputs)) as scan, TemporaryDirectory(prefix="nnseg-dicom-predict-") as tmp:
        for note in scan.notes:
            log(note)
        report.notes += scan.notes
        if not scan.series and not require_series:
            return report
        if not scan.series:
            raise ValueError(f"no DICOM image series found in {inputs}; point -i at a folder, zip or DICOMDIR tree "
                             "holding single-frame images")
        chosen = scan.series[part_id::num_parts]
        for series in chosen:  # every series is checked before anything is predicted or written
            for note in check_series(predictor, series, output_format=output_format):
                log(note)
        ending = predictor.model.spec.file_ending
        todo = [s for s in chosen if not (continue_prediction
                                          and inside(output, _output_name(s, output_format, ending)).is_file())]
        report.skipped = [s.uid for s in chosen if s not in todo]
        for uid in report.skipped:
            log(f"series {uid}: output exists, skipped (--continue_prediction)")
        report.written = _predict_series(predictor, todo, Path(tmp), output, output_format, segments,
                                         num_processes_preprocessing, num_processes_export, verbose, progress)
    report.wall_s = time.perf_counter() - start
    return report


def check_series(predictor: Predictor, series: DicomSeries, *, output_format: str) -> tuple[str, ...]:
    """Check a series (headers only) for this model and output format; return notes on what a SEG derives.

    Raises:
        DicomGeometryError / SegSourceError / SeriesRefusedError (ValueError): naming the series and the fix.
    """
    geometry = series_geometry(series)
    model = predictor.model
    if model.configuration.ndim == 3 and geometry.shape[0] == 1:
        raise SeriesRefusedError(f"series {series.uid} has a single slice ({geometry.shape[1]}x{geometry.shape[2]}) "
                                 f"but {model.configuration_name} is a 3D model; it would be resampled to copies of "
                                 "one slice. Give it the whole volume series, or use a 2D configuration")
    try:  # the prediction's own shape and spacing checks, from the headers (array axes: slice, row, column)
        check_case_geometry(f"series {series.uid}", geometry.shape, geometry.spacing[::-1], plans=model.plans,
                            configuration=model.configuration, configuration_name=model.configuration_name)
    except ValueError as e:
        raise SeriesRefusedError(str(e)) from None
    if output_format != "dicom-seg":
        return ()
    return seg_source(tuple(series.headers[i] for i in geometry.order), series.uid).notes


def write_series_image(series: DicomSeries, path: Path) -> tuple[Any, ...]:
    """Write a series as one image file (the series geometry, rescale applied); return its slice headers in order.

    Raises:
        DicomGeometryError / DicomReadError (ValueError): the series is broken (named in the message).
    """
    import SimpleITK as sitk

    volume, geometry, headers = read_volume(series)
    sitk.WriteImage(to_sitk(volume, geometry), str(path), True)
    return headers


def _predict_series(predictor: Predictor, todo: Sequence[DicomSeries], tmp: Path, output: Path, output_format: str,
                    segments: Sequence[Segment], npp: int, nps: int, verbose: bool, progress: bool) -> list[Path]:
    import SimpleITK as sitk

    if not todo:
        return []
    ending = predictor.model.spec.file_ending
    pending = []
    for series in todo:
        image_file = inside(tmp / "images", f"{case_name(series.uid)}_0000{ending}")
        image_file.parent.mkdir(parents=True, exist_ok=True)
        pending.append((series, write_series_image(series, image_file), image_file))
    target = output if output_format == "nifti" else tmp / "predicted"
    try:
        report = predict(predictor, [[f] for _, _, f in pending], target, num_processes_preprocessing=npp,
                         num_processes_export=nps, verbose=verbose, progress=progress,
                         max_memory_gb=predictor.max_memory_gb)
    except ValueError as e:  # the checks of the prediction name the temporary file: name the series instead
        message = str(e)
        for series, _, image_file in pending:
            message = message.replace(str(image_file), f"series {series.uid}").replace(image_file.name, series.uid)
        raise SeriesRefusedError(message) from None
    if output_format == "nifti":
        return list(report.written)
    return _write_segs(predictor, [(s, h) for s, h, _ in pending], target, output, segments)
