"""UIDs read from DICOM files or servers, checked before they name anything: files, folders or URLs.

No value read from a file or a server forms a path as it is. A UID must follow the DICOM UID grammar (PS3.5 9.1):
numeric components separated by ``.``, at most 64 characters. Leading zeros in a component break the grammar too,
but old scanners write them and they cannot form a path, so they are accepted. A checked UID becomes a file name by
replacing ``.`` with ``_`` (digits and ``_`` only), and :func:`inside` checks that every output path built from one
stays in its folder.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

MAX_UID_LENGTH = 64
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class DicomUidError(ValueError):
    """A UID that breaks the DICOM grammar (the message names where it came from and what to do)."""


def check_uid(value: object, *, what: str, where: str) -> str:
    """``value`` as a UID string, or raise naming ``what`` (e.g. ``SeriesInstanceUID``) and ``where`` it was read.

    Raises:
        DicomUidError: empty, too long, or other characters than digits and dots (e.g. ``/abs/path``).
    """
    text = str(value if value is not None else "").rstrip("\x00 ").strip()
    if not text:
        raise DicomUidError(f"{where} has no {what}; every DICOM object needs one: export the series again from "
                            "the scanner or PACS (or give it new UIDs, e.g. dcmodify --gen-ser-uid)")
    if len(text) > MAX_UID_LENGTH or not _UID_RE.match(text):
        shown = text if len(text) <= 80 else f"{text[:77]}..."
        raise DicomUidError(f"{where} has the {what} {shown!r}, which is not a DICOM UID (digits and dots, at most "
                            f"{MAX_UID_LENGTH} characters; got {len(text)}); nnseg refuses it rather than let it name "
                            "a file: export the series again (or give it new UIDs, e.g. dcmodify --gen-ser-uid)")
    return text


def read_uid(ds: Any, keyword: str) -> object:
    """A UID element's value as stored, without pydicom's warning on a malformed value (:func:`check_uid` judges)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ds.get(keyword)


def uid_file_stem(uid: str) -> str:
    """The file name stem of a checked UID: ``_`` for ``.`` (``1_2_840_...``), safe on every file system."""
    return check_uid(uid, what="UID", where="a file name").replace(".", "_")


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it stays directly in ``folder`` (no separators, no ``..``, not absolute).

    Raises:
        ValueError: ``name`` would leave the folder.
    """
    target = Path(folder) / name
    if Path(name).name != name or name in ("", ".", "..") or target.resolve().parent != Path(folder).resolve():
        raise ValueError(f"refusing to write {name!r}: the name would leave the folder {folder}")
    return target
