"""DICOM series zips in the page: the image it shows, and a (corrected) label map written as the series' DICOM SEG.

The page sends the zip twice more than the job does (once to see the image, once per SEG download); every file lives
in a folder of its own under the server's work folder, removed when the request ends. The zip gets the same checks as
a job's (:func:`~nnseg.serve.automatic.dicom_upload.check_dicom_zip`) and the image is written by the same function
(:func:`~nnseg.predictions.dicom.dicom_predict.write_series_image`), so it has the job's geometry voxel for voxel.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np

from nnseg.predictions.dicom.dicom_predict import segments_for, write_series_image, write_series_seg
from nnseg.serve.automatic.dicom_upload import UNZIPPED_PER_UPLOAD, client_message, read_one_series, check_dicom_zip
from nnseg.serve.automatic.models import CaseError, ServedModel, label_names


def scratch_folder(work_dir: Path) -> Path:
    folder = work_dir / "page" / uuid.uuid4().hex
    folder.mkdir(mode=0o700, parents=True)
    return folder


def _convert(zip_file: Path, *, max_upload_bytes: int) -> tuple[str, tuple[object, ...], Path]:
    """Check the zip and write its series' image beside it: (series UID, slice headers, image file)."""
    folder = zip_file.parent
    check_dicom_zip(zip_file, max_unzipped_bytes=UNZIPPED_PER_UPLOAD * max_upload_bytes)
    try:
        series = read_one_series(zip_file, folder / "dicom")
        try:
            headers = write_series_image(series, folder / "image.nii.gz")
        except ValueError as e:
            raise CaseError(client_message(e, folder), status=422) from None
        return series.uid, tuple(headers), folder / "image.nii.gz"
    finally:
        shutil.rmtree(folder / "dicom", ignore_errors=True)


def series_image(zip_file: Path, *, max_upload_bytes: int) -> bytes:
    """The NIfTI (gzip) image of the one series in a zip, as a job would predict it.

    Raises:
        CaseError: 400/413/422 as for a job's zip (see :mod:`nnseg.serve.automatic.dicom_upload`).
    """
    return _convert(zip_file, max_upload_bytes=max_upload_bytes)[2].read_bytes()


def _read_labels(labels_file: Path, shape: tuple[int, ...], allowed: set[int]) -> np.ndarray:
    import SimpleITK as sitk

    try:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file)))
    except RuntimeError:
        raise CaseError("the label map ('labels') is not a readable NIfTI image; send the mask the page shows") from None
    if labels.shape != shape:
        raise CaseError(f"the label map has shape {labels.shape}, the DICOM series {shape}; send the mask predicted "
                        "for this series", status=422)
    extra = sorted(set(np.unique(labels).tolist()) - allowed - {0})
    if extra:
        raise CaseError(f"the label map holds values {extra[:10]} the model does not know (labels {sorted(allowed)})",
                        status=422)
    return labels


def series_seg(model: ServedModel, zip_file: Path, labels_file: Path, *, max_upload_bytes: int) -> bytes:
    """The DICOM SEG of ``labels_file`` (a label map on the series' image grid) for the series in ``zip_file``.

    Raises:
        CaseError: the zip's errors, an unreadable label map (400), another grid or unknown values (422).
    """
    import SimpleITK as sitk

    uid, headers, image = _convert(zip_file, max_upload_bytes=max_upload_bytes)
    shape = sitk.GetArrayViewFromImage(sitk.ReadImage(str(image))).shape
    labels = _read_labels(labels_file, shape, set(label_names(model).values()))
    target = zip_file.parent / "seg.dcm"
    write_series_seg(model.predictor, labels.astype(np.uint8), uid, headers, segments_for(model.predictor, None), target)
    return target.read_bytes()
