"""What a DICOM SEG takes from its source series, checked and completed before any prediction is made.

highdicom copies the Patient and General Study modules and the pixel measures from the first source slice. Many
converters and anonymisers drop Type 2 attributes (present, possibly empty), and SimpleITK's series writer omits
SliceThickness; highdicom then fails after the whole prediction. Here, per series and headers only:

* SliceThickness (0018,0050) missing or empty: the SEG gets the spacing of the slice positions (a contiguous stack's
  thickness); one slice without SliceThickness or SpacingBetweenSlices has no spacing to derive it from: refused.
* Patient and study Type 2 attributes missing: the SEG gets them empty, as the standard allows for unknown values.
* Type 1 UIDs the SEG must reference (study, frame of reference, each slice's SOP class and instance): refused when
  missing or not a UID, since none can be made up without breaking the link to the source.

The source files are never changed: the SEG is built from a completed copy of the first slice's header.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nnseg.raw.dicom.geometry import stack_geometry
from nnseg.raw.dicom.series import slice_header
from nnseg.raw.dicom.uids import DicomUidError, check_uid, read_uid

TYPE2_FILLED = {"PatientName": "0010,0010", "PatientID": "0010,0020", "PatientBirthDate": "0010,0030",
                "PatientSex": "0010,0040", "StudyDate": "0008,0020", "StudyTime": "0008,0030",
                "AccessionNumber": "0008,0050", "StudyID": "0020,0010", "ReferringPhysicianName": "0008,0090"}
FIRST_SLICE_UIDS = {"StudyInstanceUID": "0020,000D", "FrameOfReferenceUID": "0020,0052"}
EVERY_SLICE_UIDS = {"SOPClassUID": "0008,0016", "SOPInstanceUID": "0008,0018"}
FIX = ("export the series again from the scanner or PACS with the attribute, or set it in every file (e.g. dcmodify "
       "-i '({tag})=VALUE' *.dcm)")


class SegSourceError(ValueError):
    """A source series that a SEG cannot be built on (the message names the series, the tag and the fix)."""


@dataclass(frozen=True)
class SegSource:
    """The slices a SEG is built on (the first one completed), and what was derived, as notes."""

    headers: tuple[Any, ...]
    notes: tuple[str, ...]


def _present(ds: Any, keyword: str) -> bool:
    return keyword in ds and ds[keyword].value not in (None, "", b"")


def _check_uids(headers: Sequence[Any], series: str) -> None:
    for ds in headers:
        for keyword, tag in ((FIRST_SLICE_UIDS if ds is headers[0] else {}) | EVERY_SLICE_UIDS).items():
            try:
                check_uid(read_uid(ds, keyword), what=f"{keyword} ({tag})", where=f"series {series}: {ds.filename}")
            except DicomUidError as e:
                raise SegSourceError(f"{e}; a DICOM SEG must reference it (or choose --output-format nifti)") from None


def _thickness(headers: Sequence[Any], series: str) -> float:
    first = headers[0]
    if len(headers) == 1 and not _present(first, "SpacingBetweenSlices"):
        raise SegSourceError(f"series {series}: {first.filename} is a single slice without SliceThickness (0018,0050) "
                             "or SpacingBetweenSlices (0018,0088), so the SEG's slice thickness cannot be derived; "
                             + FIX.format(tag="0018,0050") + ", or choose --output-format nifti")
    geometry = stack_geometry([slice_header(ds) for ds in headers], series=series)
    return float(geometry.spacing[2])


def seg_source(headers: Sequence[Any], series: str) -> SegSource:
    """Check the slice headers (in volume order) of ``series`` for a SEG and complete the first one (see above).

    Raises:
        SegSourceError: a UID is missing or malformed, or the slice thickness cannot be derived.
    """
    _check_uids(headers, series)
    first = copy.deepcopy(headers[0])
    notes = []
    if not _present(first, "SliceThickness"):
        thickness = _thickness(headers, series)
        first.SliceThickness = f"{thickness:.6g}"
        notes.append(f"series {series}: SliceThickness (0018,0050) is missing; the SEG uses {thickness:.6g} mm, the "
                     "spacing of the slice positions")
    filled = [keyword for keyword in TYPE2_FILLED if keyword not in first]
    for keyword in filled:
        setattr(first, keyword, "")
    if filled:
        notes.append(f"series {series}: {', '.join(f'{k} ({TYPE2_FILLED[k]})' for k in filled)} missing; the SEG "
                     "leaves them empty (Type 2: unknown)")
    return SegSource(headers=(first, *headers[1:]), notes=tuple(notes))
