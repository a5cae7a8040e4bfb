"""``nnseg predict --dicomweb URL --study UID``: retrieve series (WADO-RS), predict, store DICOM SEGs (STOW-RS).

Resumable per series: the SEG of a source series has a SeriesInstanceUID derived from the source series UID and
the model (:func:`~nnseg.predictions.dicom.dicom_predict.seg_uids`), and a series whose SEG the server already holds
(QIDO-RS search on the study) is skipped. A run killed at any point and started again stores exactly one SEG per
series (a SEG stored twice would also keep its SOPInstanceUID, which an archive treats as the same instance).

Every UID from the command line or the server is checked (:func:`~nnseg.raw.dicom.uids.check_uid`) before it forms a
URL; instances are streamed into numbered files of a temporary folder; the HTTP rules (deadline, size caps, redirects,
one-line errors) are in :mod:`nnseg.predictions.dicom.dicomweb_http`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from nnseg._types import PathLike
from nnseg.predictions.dicom.dicom_predict import (SeriesRefusedError, check_model_for_dicom, predict_dicom, seg_uids,
                                             segments_for)
from nnseg.predictions.dicom.dicomweb_http import DicomWebClient, DicomWebLimits
from nnseg.predictions.run.predict import Predictor
from nnseg.raw.dicom.files import NON_IMAGE_MODALITIES
from nnseg.raw.dicom.geometry import DicomGeometryError
from nnseg.raw.dicom.seg_source import SegSourceError
from nnseg.raw.dicom.series import DicomReadError
from nnseg.raw.dicom.uids import DicomUidError, check_uid

MODALITY, SERIES_UID, SERIES_DESCRIPTION = "00080060", "0020000E", "0008103E"


@dataclass
class DicomWebReport:
    """SEG SeriesInstanceUIDs stored, source series skipped (SEG exists, or nothing to segment), series refused
    (broken, with the reason), and the local SEG files."""

    stored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _stderr(message: str) -> None:
    print(f"nnseg: {message}", file=sys.stderr, flush=True)


def auth_headers(*, token: str | None = None, headers: Sequence[str] = ()) -> dict[str, str]:
    """HTTP headers from ``--token`` (``Authorization: Bearer TOKEN``) and ``--header 'Name: value'`` options."""
    out = {"Authorization": f"Bearer {token}"} if token else {}
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {h!r} is not 'Name: value' (e.g. --header 'Authorization: Basic dXNlcjpwdw==')")
        out[name.strip()] = value.strip()
    return out


def _value(item: Mapping[str, Any], tag: str) -> str:
    entry = item.get(tag)
    values = (entry.get("Value") if isinstance(entry, Mapping) else None) or [""]
    return str(values[0])


def image_series(client: DicomWebClient, study: str) -> list[str]:
    """SeriesInstanceUIDs (checked) of the study's image series (SEG, SR, PR, RTSTRUCT, ... left out)."""
    found = client.search_series(study)
    if not found:
        raise ValueError(f"study {study} has no series on {client.root}; check --study")
    where = f"the QIDO-RS answer of {client.root}/studies/{study}/series"
    return sorted(check_uid(_value(s, SERIES_UID), what="SeriesInstanceUID (0020000E)", where=where)
                  for s in found if _value(s, MODALITY).upper() not in NON_IMAGE_MODALITIES)


def _retrieve(client: DicomWebClient, study: str, series: str, folder: Path) -> None:
    if client.retrieve_series(study, series, folder) == 0:
        raise ValueError(f"series {series} of study {study} has no instances on {client.root}; check --series")


REFUSED = (DicomGeometryError, DicomReadError, DicomUidError, SegSourceError, SeriesRefusedError)


def predict_dicomweb(predictor: Predictor, url: str, study: str, output: PathLike, *,
                     series: Sequence[str] | None = None, headers: Mapping[str, str] | None = None,
                     seg_codes: PathLike | None = None, log: Callable[[str], None] = _stderr,
                     progress: bool = False, limits: DicomWebLimits = DicomWebLimits()) -> DicomWebReport:
    """Segment the image series of ``study`` (or just ``series``) on a DICOMweb server and store a SEG for each.

    Args:
        url: the DICOMweb root (e.g. ``http://host:8042/dicom-web``); headers: extra HTTP headers (authentication).
        output: local folder that keeps a copy of every SEG (``<SeriesInstanceUID>.dcm``).
        limits: deadline per request and size caps of a retrieved instance and series.

    A broken series (missing slices, tilt, a malformed UID, ...) is refused with its reason in ``report.refused`` and
    the others go on; a series with nothing to segment (only localizers, or not images) is skipped.

    Raises:
        DicomWebError (ConnectionError): the server refused, failed, answered nonsense or not in time (one line);
        ValueError: no such study/series, or a UID on the command line that is none.
    """
    check_model_for_dicom(predictor)
    segments_for(predictor, seg_codes)  # a bad code file fails before any transfer
    study = check_uid(study, what="StudyInstanceUID", where="--study")
    wanted = [check_uid(uid, what="SeriesInstanceUID", where="--series") for uid in series or ()]
    client = DicomWebClient(url, headers=headers, limits=limits)
    report = DicomWebReport()
    for uid in wanted or image_series(client, study):
        _one_series(predictor, client, study, uid, Path(output), seg_codes, report, log, progress)
    return report


def _one_series(predictor: Predictor, client: DicomWebClient, study: str, uid: str, output: Path,
                seg_codes: PathLike | None, report: DicomWebReport, log: Callable[[str], None], progress: bool) -> None:
    seg_series, _ = seg_uids(uid, predictor)
    if client.search_series(study, {"SeriesInstanceUID": seg_series}):
        log(f"series {uid}: its SEG {seg_series} is already on the server, skipped")
        report.skipped.append(uid)
        return
    with TemporaryDirectory(prefix="nnseg-dicomweb-") as tmp:
        _retrieve(client, study, uid, Path(tmp) / "series")
        log(f"series {uid}: retrieved")
        try:
            done = predict_dicom(predictor, Path(tmp) / "series", output, output_format="dicom-seg",
                                 seg_codes=seg_codes, progress=progress, log=log, require_series=False)
        except REFUSED as e:  # named by the series and instance number, not by the temporary file
            reason = str(e).replace(f"{Path(tmp) / 'series'}{os.sep}", "the retrieved instance ")
            reason = reason if reason.startswith(f"series {uid}") else f"series {uid}: {reason}"
            log(f"refused: {reason}")
            report.refused[uid] = reason
            return
    if not done.written:
        log(f"series {uid}: no image slices to segment, skipped")
        report.skipped.append(uid)
        return
    client.store(study, done.written[0])
    log(f"series {uid}: stored SEG {seg_series}")
    report.stored.append(seg_series)
    report.files += done.written
