"""DICOM Segmentation (highdicom) for a label map on the grid of a source series, and reading one back.

One segment per foreground label (or region) of ``dataset.json``, named after it; codes come from a mapping file
(``--seg-codes``) or default to SCT 91723000 "Anatomical structure" / SCT 85756007 "Tissue". The SEG references
the source series and, per frame, its source slice; frames lie in the source geometry (highdicom copies the
planes of the source images).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnseg.jsonio import atomic_path
from nnseg.raw.dicom import require

DEFAULT_CATEGORY = ("91723000", "SCT", "Anatomical structure")
DEFAULT_TYPE = ("85756007", "SCT", "Tissue")
Code = tuple[str, str, str]


@dataclass(frozen=True)
class Segment:
    """A label value of the prediction, its segment number in the SEG, name and codes (value, scheme, meaning)."""

    value: int
    number: int
    name: str
    category: Code = DEFAULT_CATEGORY
    type: Code = DEFAULT_TYPE


def label_names(labels: Mapping[str, Any], regions_class_order: Sequence[int] | None = None, *,
                ignored: Sequence[str] = ("ignore",)) -> list[tuple[int, str]]:
    """(value in the predicted label map, name) of each foreground label, or of each region for region models;
    ``ignored``: the ignore label names (``DatasetSpec.ignore_names``), never predicted."""
    fg = [(name, v) for name, v in labels.items() if name != "background" and name not in ignored]
    if regions_class_order is not None:
        return [(int(value), name) for value, (name, _) in zip(regions_class_order, fg)]
    return sorted((int(v), name) for name, v in fg)


def _code(entry: Any, where: str) -> Code:
    if isinstance(entry, Mapping):
        entry = [entry.get("value"), entry.get("scheme"), entry.get("meaning")]
    if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 3 \
            or not all(isinstance(v, str) and v for v in entry):
        raise ValueError(f"{where}: expected [value, scheme, meaning] or {{\"value\", \"scheme\", \"meaning\"}} with "
                         f"non-empty strings, e.g. [\"10200004\", \"SCT\", \"Liver\"]; got {entry!r}")
    return (entry[0], entry[1], entry[2])


def load_seg_codes(path: Path, names: Sequence[tuple[int, str]]) -> dict[str, tuple[Code, Code]]:
    """Read a ``--seg-codes`` JSON file: ``{label name or value: {"category": CODE, "type": CODE}}``.

    Raises:
        FileNotFoundError / ValueError: no such file, not JSON, an unknown label, or a malformed code.
    """
    if not path.is_file():
        raise FileNotFoundError(f"segment code file {path} does not exist (--seg-codes)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"segment code file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"segment code file {path} must hold an object {{label name: {{category, type}}}}")
    by_key = {name: name for _, name in names} | {str(v): name for v, name in names}
    out: dict[str, tuple[Code, Code]] = {}
    for key, entry in data.items():
        if key not in by_key:
            raise ValueError(f"segment code file {path} names label {key!r}, which the model does not predict; known: "
                             f"{[n for _, n in names]}")
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"segment code file {path}, label {key!r}: expected {{\"category\": CODE, \"type\": CODE}}")
        category = _code(entry.get("category", DEFAULT_CATEGORY), f"{path} label {key!r} category")
        out[by_key[key]] = (category, _code(entry["type"], f"{path} label {key!r} type"))
    return out


def make_segments(names: Sequence[tuple[int, str]], codes: Mapping[str, tuple[Code, Code]] | None = None) -> list[Segment]:
    """Segments numbered 1..N in label-value order, with codes from ``codes`` (by name) or the defaults."""
    codes = codes or {}
    return [Segment(value=v, number=i + 1, name=name, category=codes.get(name, (DEFAULT_CATEGORY, DEFAULT_TYPE))[0],
                    type=codes.get(name, (DEFAULT_CATEGORY, DEFAULT_TYPE))[1])
            for i, (v, name) in enumerate(sorted(names))]


def derived_uid(*parts: str) -> str:
    """A UID (2.25 root) that depends only on ``parts``: reruns give the same SEG series and instance UIDs."""
    import uuid

    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, chr(0).join(str(p) for p in parts)).int}"


def _descriptions(segments: Sequence[Segment], version: str) -> list[Any]:
    hd = require("highdicom")
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="nnseg", family=codes.cid7162.ArtificialIntelligence,
                                                   version=version)
    return [hd.seg.SegmentDescription(segment_number=s.number, segment_label=s.name[:64],
                                      segmented_property_category=hd.sr.CodedConcept(*s.category),
                                      segmented_property_type=hd.sr.CodedConcept(*s.type),
                                      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                      algorithm_identification=algorithm) for s in segments]


def write_segmentation(labels: np.ndarray, sources: Sequence[Any], segments: Sequence[Segment], path: Path, *,
                       series_uid: str, sop_uid: str, description: str, version: str) -> None:
    """Write a BINARY DICOM SEG of ``labels`` ``(slice, row, column)`` whose slices are ``sources`` (in that order).

    Raises:
        ValueError: the label map does not match the source grid or holds values that are no segment.
    """
    hd = require("highdicom")
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"label map shape {labels.shape} does not match the source series "
                         f"({len(sources)} slices of {sources[0].Rows}x{sources[0].Columns}); cannot write {path}")
    lut = np.zeros(max([int(labels.max()), *[s.value for s in segments]]) + 1, dtype=np.uint8)
    for s in segments:
        lut[s.value] = s.number
    unknown = sorted(set(np.unique(labels).tolist()) - {0} - {s.value for s in segments})
    if unknown:
        raise ValueError(f"label map values {unknown} have no segment (known: {[s.value for s in segments]})")
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=lut[labels.astype(np.int64)],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=_descriptions(segments, version),
        series_instance_uid=series_uid, series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer="nnseg", manufacturer_model_name="nnseg",
        software_versions=version, device_serial_number="0", series_description=description[:64],
        content_label="NNSEG", content_description=description[:64], omit_empty_frames=bool(labels.any()))
    with atomic_path(path) as tmp:
        seg.save_as(tmp)


def read_segmentation(path: Path, sources: Sequence[Any]) -> tuple[np.ndarray, dict[int, str]]:
    """Segment numbers ``(slice, row, column)`` on the grid of ``sources`` and the segment labels of a SEG file."""
    hd = require("highdicom")
    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    names = {int(n): str(seg.get_segment_description(n).segment_label) for n in seg.get_segment_numbers()}
    return np.asarray(numbers), names
