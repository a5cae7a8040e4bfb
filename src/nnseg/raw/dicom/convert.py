"""``nnseg convert-dicom``: a raw dataset (``DatasetXXX_Name``) from DICOM image series and their labels.

Labels are DICOM SEGs (found among the images or in a labels folder; each SEG names its source series) or NIfTI
files named ``<SeriesInstanceUID>.nii.gz`` (dots or underscores) on the series grid, with names from a labels JSON.
Every image series becomes ``imagesTr/<Name>_NNN_0000.nii.gz`` (``imagesTs`` when it has no label) in the series
geometry; ``dicom_cases.json`` maps each case to its series. Nothing is written when an input is broken.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnseg._types import PathLike
from nnseg.jsonio import save_json
from nnseg.raw.convert import dataset_folders_with_id, staging_folder
from nnseg.raw.dataset_json import DatasetSpec, save_dataset_json
from nnseg.raw.dicom.files import DicomScan, DicomSeries, open_dicom
from nnseg.raw.dicom.seg import read_segmentation
from nnseg.raw.dicom.series import read_volume, series_geometry, to_sitk

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


@dataclass(frozen=True)
class _Case:
    identifier: str
    series: DicomSeries
    label: Path | None


def _seg_sources(scans: Sequence[DicomScan]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for scan in scans:
        for ds in scan.others:
            if str(ds.get("Modality", "")) != "SEG" or "ReferencedSeriesSequence" not in ds:
                continue
            source = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
            if source in out:
                raise ValueError(f"series {source} has two SEGs ({out[source]} and {ds.filename}); keep one of them")
            out[source] = Path(ds.filename)
    return out


def _nifti_labels(folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name[: -len(".nii.gz")].replace("_", "."): p for p in sorted(folder.glob("*.nii.gz"))}


def _global_labels(segs: Mapping[str, tuple[np.ndarray, dict[int, str]]]) -> dict[str, int]:
    """Label values by segment name over all SEGs: names in order of their lowest segment number, values 1..N."""
    first: dict[str, int] = {}
    for _, names in segs.values():
        for number, name in names.items():
            first[name] = min(first.get(name, number), number)
    ordered = sorted(first, key=lambda n: (first[n], n))
    return {"background": 0} | {name: i + 1 for i, name in enumerate(ordered)}


def _read_seg(path: Path, headers: Sequence[Any], series: str) -> tuple[np.ndarray, dict[int, str]]:
    try:
        return read_segmentation(path, headers)
    except (ValueError, RuntimeError, KeyError, AttributeError) as e:
        raise ValueError(f"cannot read SEG {path} on the slices of series {series} ({e}); nnU-Net labels must not "
                         "overlap and the SEG must reference the series' slices") from None


def _nifti_label(path: Path, reference: Any, labels: Mapping[str, int]) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    same = image.GetSize() == reference.GetSize() and all(
        np.allclose(getattr(image, f)(), getattr(reference, f)(), atol=1e-3)
        for f in ("GetSpacing", "GetOrigin", "GetDirection"))
    if not same:
        raise ValueError(f"label {path} (size {image.GetSize()}, origin {image.GetOrigin()}) is not on the grid of its "
                         f"DICOM series (size {reference.GetSize()}, origin {reference.GetOrigin()}); resample it")
    array = sitk.GetArrayFromImage(image)
    unknown = sorted(set(np.unique(array).tolist()) - set(labels.values()))
    if unknown:
        raise ValueError(f"label {path} holds values {unknown} that the labels JSON does not name ({dict(labels)})")
    return array.astype(np.uint8)


def _write_case(case: _Case, folder: Path, labels_json: Mapping[str, int] | None,
                segs: Mapping[str, tuple[np.ndarray, dict[int, str]]], labels: Mapping[str, int]) -> None:
    import SimpleITK as sitk

    volume, geometry, _ = read_volume(case.series)
    image = to_sitk(volume, geometry)
    split = "Tr" if case.label is not None else "Ts"
    sitk.WriteImage(image, str(folder / f"images{split}" / f"{case.identifier}_0000.nii.gz"), True)
    if case.label is None:
        return
    if case.series.uid in segs:
        numbers, names = segs[case.series.uid]
        lut = np.zeros(max(names) + 1, dtype=np.uint8)
        for number, name in names.items():
            lut[number] = labels[name]
        array = lut[numbers]
    else:
        array = _nifti_label(case.label, image, labels_json or {})
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    sitk.WriteImage(label, str(folder / "labelsTr" / f"{case.identifier}.nii.gz"), True)


def _cases(series: Sequence[DicomSeries], name: str, seg_files: Mapping[str, Path],
           nifti: Mapping[str, Path]) -> list[_Case]:
    return [_Case(f"{name}_{i:03d}", s, seg_files.get(s.uid) or nifti.get(s.uid)) for i, s in enumerate(series)]


def _load_labels_json(path: PathLike | None) -> dict[str, int] | None:
    if path is None:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("background") != 0:
        raise ValueError(f"labels file {path} must map names to values with \"background\": 0, e.g. "
                         "{\"background\": 0, \"liver\": 1}")
    return {str(k): int(v) for k, v in data.items()}


def convert_dicom(images: PathLike, raw_root: PathLike, *, dataset_id: int, name: str,
                  labels: PathLike | None = None, labels_json: PathLike | None = None,
                  other_roots: Sequence[PathLike | None] = ()) -> Path:
    """Build ``raw_root/DatasetXXX_<name>`` from the DICOM series under ``images`` (see the module docstring).

    Args:
        labels: folder (or zip) with SEG files or ``<SeriesInstanceUID>.nii.gz`` labels; SEGs under ``images`` are
            always used. labels_json: ``{"background": 0, name: value}`` for NIfTI labels (required with them).
        other_roots: nnUNet_preprocessed / nnUNet_results, checked for a clash of the dataset id.

    Raises:
        ValueError / FileExistsError: a bad name or id, no series, no labels, a broken series or label.
    """
    if not _NAME_RE.match(name) or not 0 < dataset_id < 1000:
        raise ValueError(f"dataset id {dataset_id} / name {name!r}: use an id in 1..999 and a name of letters, digits "
                         "and '-' (e.g. -d 501 -n LiverCT)")
    raw_root = Path(raw_root)
    clashes = dataset_folders_with_id(dataset_id, [raw_root, *other_roots])
    if clashes:
        raise FileExistsError(f"dataset id {dataset_id} is already used by {clashes[0]}; choose a free id with -d")
    names = _load_labels_json(labels_json)
    with open_dicom(Path(images)) as scan, \
            (open_dicom(Path(labels)) if labels is not None else nullcontext(DicomScan())) as label_scan:
        if not scan.series:
            raise ValueError(f"no DICOM image series found in {images}")
        for s in scan.series:
            series_geometry(s)
        cases = _cases(scan.series, name, _seg_sources([scan, label_scan]),
                       _nifti_labels(Path(labels) if labels is not None else None))
        return _write_dataset(cases, raw_root, f"Dataset{dataset_id:03d}_{name}", names)


def _write_dataset(cases: Sequence[_Case], raw_root: Path, folder_name: str,
                   labels_json: Mapping[str, int] | None) -> Path:
    labelled = [c for c in cases if c.label is not None]
    if not labelled:
        raise ValueError("no series has a label (a SEG referencing it, or <SeriesInstanceUID>.nii.gz in --labels); "
                         "nothing to train on")
    segs = {c.series.uid: _read_seg(c.label, read_volume_headers(c.series), c.series.uid)
            for c in labelled if c.label is not None and not c.label.name.endswith(".nii.gz")}
    if len(segs) < len(labelled) and labels_json is None:
        raise ValueError("NIfTI labels need --labels-json NAMES.json ({\"background\": 0, \"name\": value, ...})")
    label_values = labels_json if labels_json is not None else _global_labels(segs)
    with staging_folder(raw_root, folder_name) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for case in cases:
            _write_case(case, tmp, labels_json, segs, label_values)
        modality = cases[0].series.modality or "image"
        spec = DatasetSpec.from_json({"channel_names": {"0": modality}, "labels": dict(label_values),
                                      "numTraining": len(labelled), "file_ending": ".nii.gz",
                                      "name": folder_name.split("_", 1)[1]}, source=folder_name)
        save_dataset_json(spec, tmp / "dataset.json")
        save_json({c.identifier: {"series_instance_uid": c.series.uid, "label": None if c.label is None else str(c.label)}
                   for c in cases}, tmp / "dicom_cases.json")
    return raw_root / folder_name


def read_volume_headers(series: DicomSeries) -> tuple[Any, ...]:
    """The slice headers of a series in volume order (the order SEG frames are matched against)."""
    geometry = series_geometry(series)
    return tuple(series.headers[i] for i in geometry.order)
