"""Find DICOM image series in a folder (nested, any file names, a DICOMDIR tree) or a zip, by SeriesInstanceUID.

Headers are read without pixel data. Objects that are not images (SEG, SR, PR, RTSTRUCT, KO, ... and DICOMDIR
itself) and localizer slices are left out with a note; files that are not DICOM are counted in a note.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from nnseg.raw.dicom import require
from nnseg.raw.dicom.uids import check_uid, read_uid

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "DOC", "FID", "AU", "ECG"}
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class DicomSeries:
    """One image series: its UIDs and the headers (no pixel data) of its slices, in file order."""

    uid: str
    study_uid: str
    modality: str
    description: str
    headers: tuple[Any, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(Path(h.filename) for h in self.headers)


@dataclass
class DicomScan:
    """The image series found, the non-image objects (e.g. SEGs for ``convert-dicom``) and notes on what was left out."""

    series: list[DicomSeries] = field(default_factory=list)
    others: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    non_dicom: list[str] = field(default_factory=list)  # files left out as not DICOM, as messages name them


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM file: ``DICM`` after the 128-byte preamble, then the file meta group
    (0002,xxxx). Without that group pydicom would parse the bytes as a dataset: a megabyte of zeros becomes a
    hundred thousand empty elements, a hostile 400 MiB file a parse of many minutes."""
    try:
        with open(path, "rb") as f:
            head = f.read(134)
    except OSError:
        return False
    return head[128:132] == b"DICM" and head[132:134] == b"\x02\x00"


def looks_like_dicom_input(path: Path, *, max_files: int = 200) -> bool:
    """A zip, or a folder holding a DICOMDIR or a DICOM file among its first ``max_files`` files."""
    if path.is_file():
        return zipfile.is_zipfile(path)
    for n, f in enumerate(p for p in sorted(path.rglob("*")) if p.is_file()):
        if n >= max_files:
            return False
        if f.name.upper() == "DICOMDIR" or is_dicom_file(f):
            return True
    return False


def _extract(archive: Path, target: Path) -> Path:
    """Extract a zip into ``target``, refusing absolute names and names that leave the folder."""
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                raise ValueError(f"zip {archive} holds the unsafe entry {name!r}; refusing to extract it")
        zf.extractall(target)
    return target


def _files(root: Path, scratch: Path) -> Iterator[Path]:
    if root.is_file():
        if not zipfile.is_zipfile(root):
            yield root
            return
        root = _extract(root, scratch / f"zip{len(list(scratch.glob('zip*')))}")
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if not is_dicom_file(f) and f.suffix.lower() == ".zip" and zipfile.is_zipfile(f):
            yield from _files(f, scratch)
        else:
            yield f


def shown_path(path: Path, scratch: Path) -> str:
    """How a scanned file is named in messages: its path, or ``zip entry NAME`` for a file unpacked into ``scratch``."""
    try:
        parts = path.relative_to(scratch).parts
    except ValueError:
        return str(path)
    return f"zip entry {'/'.join(parts[1:])}"


def _is_image(ds: Any) -> bool:
    return (str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES and "Rows" in ds and "Columns" in ds
            and str(ds.get("SOPClassUID", "")) != SEG_CLASS)


def _note_left_out(scan: DicomScan, groups: dict[str, list[Any]]) -> None:
    for uid, headers in groups.items():
        ds = headers[0]
        what = ds.get("SOPClassUID", "unknown SOP class")
        name = getattr(what, "name", str(what))
        scan.notes.append(f"skipped series {uid} ({len(headers)} file(s), Modality {ds.get('Modality', '?')}, {name}): "
                          "not an image series")
    if scan.non_dicom:
        scan.notes.append(f"skipped {len(scan.non_dicom)} file(s) that are not DICOM")


def scan_dicom(root: Path, *, scratch: Path) -> DicomScan:
    """Group the DICOM files under ``root`` (a folder, a zip, or one file) by SeriesInstanceUID.

    Args:
        root: the input; zips (``root`` itself or ``*.zip`` inside it) are extracted into ``scratch``.
        scratch: an existing temporary folder that lives as long as the result is used.
    """
    pydicom = require("pydicom")
    scan = DicomScan()
    images: dict[str, list[Any]] = {}
    left_out: dict[str, list[Any]] = {}
    localizers: dict[str, int] = {}
    for f in _files(root, scratch):
        try:
            if not is_dicom_file(f):
                raise pydicom.errors.InvalidDicomError(f"{f} has no DICOM file meta information")
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, EOFError, OSError):
            scan.non_dicom.append(shown_path(f, scratch))
            continue
        meta = getattr(ds, "file_meta", None) or {}
        if DICOMDIR_CLASS in (str(ds.get("SOPClassUID", "")), str(meta.get("MediaStorageSOPClassUID", ""))):
            continue  # the DICOMDIR indexes files of the same tree, which are read directly
        if not _is_image(ds):
            scan.others.append(ds)
            left_out.setdefault(str(ds.get("SeriesInstanceUID", f"(no SeriesInstanceUID: {f.name})")), []).append(ds)
            continue
        uid = check_uid(read_uid(ds, "SeriesInstanceUID"), what="SeriesInstanceUID (0020,000E)", where=shown_path(f, scratch))
        if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            localizers[uid] = localizers.get(uid, 0) + 1
        else:
            images.setdefault(uid, []).append(ds)
    _note_left_out(scan, left_out)
    scan.notes += [f"series {uid}: left out {n} localizer slice(s) (ImageType LOCALIZER)" for uid, n in localizers.items()]
    for uid, headers in sorted(images.items()):
        first = headers[0]
        scan.series.append(DicomSeries(uid=uid, study_uid=str(first.get("StudyInstanceUID", "")),
                                       modality=str(first.get("Modality", "")),
                                       description=str(first.get("SeriesDescription", "")), headers=tuple(headers)))
    return scan


@contextmanager
def open_dicom(root: Path) -> Iterator[DicomScan]:
    """:func:`scan_dicom` with a temporary scratch folder that is removed afterwards."""
    with TemporaryDirectory(prefix="nnseg-dicom-") as tmp:
        yield scan_dicom(Path(root), scratch=Path(tmp))
