"""``nnseg predict --dicomweb URL --study UID``: retrieve series (WADO-RS), predict, store DICOM SEGs (STOW-RS).

Resumable per series: the SEG of a source series has a SeriesInstanceUID derived from the source series UID and
the model (:func:`~nnseg.predictions.dicom_predict.seg_uids`), and a series whose SEG the server already holds
(QIDO-RS search on the study) is skipped. A run killed at any point and started again stores exactly one SEG per
series (a SEG stored twice would also keep its SOPInstanceUID, which an archive treats as the same instance).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from nnseg._types import PathLike
from nnseg.predictions.dicom_predict import check_model_for_dicom, predict_dicom, seg_uids, segments_for
from nnseg.predictions.predict import Predictor
from nnseg.raw.dicom import require
from nnseg.raw.dicom.files import NON_IMAGE_MODALITIES
from nnseg.raw.dicom.geometry import DicomGeometryError
from nnseg.raw.dicom.series import DicomReadError

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
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _call(what: str, url: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    requests = require("requests")
    try:
        return fn(**kwargs)
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = " (pass credentials with --token or --header)" if status in (401, 403) else ""
        raise RuntimeError(f"DICOMweb {what} at {url} failed with HTTP {status}{hint}: {e}") from None
    except requests.ConnectionError as e:
        raise RuntimeError(f"cannot reach the DICOMweb server {url} ({e}); check --dicomweb URL") from None


def image_series(client: Any, url: str, study: str) -> list[str]:
    """SeriesInstanceUIDs of the study's image series (SEG, SR, PR, RTSTRUCT, ... left out)."""
    found = _call("QIDO-RS search for series", url, client.search_for_series, study_instance_uid=study)
    if not found:
        raise ValueError(f"study {study} has no series on {url}; check --study")
    return sorted(_value(s, SERIES_UID) for s in found if _value(s, MODALITY).upper() not in NON_IMAGE_MODALITIES)


def _retrieve(client: Any, url: str, study: str, series: str, folder: Path) -> None:
    instances = _call("WADO-RS retrieve", url, client.retrieve_series, study_instance_uid=study,
                      series_instance_uid=series)
    if not instances:
        raise ValueError(f"series {series} of study {study} has no instances on {url}; check --series")
    folder.mkdir(parents=True)
    for i, ds in enumerate(instances):
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


def predict_dicomweb(predictor: Predictor, url: str, study: str, output: PathLike, *,
                     series: Sequence[str] | None = None, headers: Mapping[str, str] | None = None,
                     seg_codes: PathLike | None = None, log: Callable[[str], None] = _stderr,
                     progress: bool = False) -> DicomWebReport:
    """Segment the image series of ``study`` (or just ``series``) on a DICOMweb server and store a SEG for each.

    Args:
        url: the DICOMweb root (e.g. ``http://host:8042/dicom-web``); headers: extra HTTP headers (authentication).
        output: local folder that keeps a copy of every SEG (``<SeriesInstanceUID>.dcm``).

    A broken series (missing slices, tilt, ...) is refused with its reason in ``report.refused`` and the others go on;
    a series with nothing to segment (only localizers, or not images) is skipped.

    Raises:
        RuntimeError: the server refused or could not be reached; ValueError: no such study/series.
    """
    web = require("dicomweb_client")
    check_model_for_dicom(predictor)
    segments_for(predictor, seg_codes)  # a bad code file fails before any transfer
    client = web.DICOMwebClient(url, headers=dict(headers or {}))
    report = DicomWebReport()
    for uid in list(series) if series else image_series(client, url, study):
        seg_series, _ = seg_uids(uid, predictor)
        existing = _call("QIDO-RS search for SEG", url, client.search_for_series, study_instance_uid=study,
                         search_filters={"SeriesInstanceUID": seg_series})
        if existing:
            log(f"series {uid}: its SEG {seg_series} is already on the server, skipped")
            report.skipped.append(uid)
            continue
        with TemporaryDirectory(prefix="nnseg-dicomweb-") as tmp:
            _retrieve(client, url, study, uid, Path(tmp) / "series")
            log(f"series {uid}: retrieved")
            try:
                done = predict_dicom(predictor, Path(tmp) / "series", output, output_format="dicom-seg",
                                     seg_codes=seg_codes, progress=progress, log=log, require_series=False)
            except (DicomGeometryError, DicomReadError) as e:
                log(f"refused: {e}")
                report.refused[uid] = str(e)
                continue
        if not done.written:
            log(f"series {uid}: no image slices to segment, skipped")
            report.skipped.append(uid)
            continue
        seg = require("pydicom").dcmread(done.written[0])
        _call("STOW-RS store", url, client.store_instances, datasets=[seg])
        log(f"series {uid}: stored SEG {seg_series}")
        report.stored.append(seg_series)
        report.files += done.written
    return report
