"""Check a raw dataset before planning and report every problem at once (nnU-Net's ``verify_dataset_integrity``).

Errors: missing/invalid ``dataset.json`` keys, ``numTraining`` different from the number of cases, missing or
misnamed channel files, missing label files, unreadable files, label values not declared in ``dataset.json``,
NaNs in images, image/label shape or spacing mismatch, wrong number of channels. Warnings: origin, direction or
affine mismatch between the files of a case (nnU-Net only warns about these too).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnseg.jsonio import load_json
from nnseg.parallel import spawn_map
from nnseg.raw.dataset_json import DatasetSpec, dataset_json_problems, labels_problems
from nnseg.raw.partial_labels import PARTIAL_KEY, PartialLabels, partial_labels_problems
from nnseg.raw.discover import CaseFiles, endings_found, scan_channel_files, training_cases

ERROR = "error"
WARNING = "warning"
_MAX_EXAMPLES = 5  # image files tried when choosing the reader


def default_num_processes() -> int:
    """nnU-Net's default of 8 worker processes, capped at the number of CPUs."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` ("error" or "warning"), the file concerned (or None), what is wrong, and the fix."""

    severity: str
    file: Path | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file is not None else ""
        return f"{self.severity.upper()}: {where}{self.message}. Fix: {self.fix}"


def format_report(problems: Sequence[Problem], raw_dataset_folder: Path | None = None) -> str:
    """A printable report: one line per problem and a summary line."""
    errors = sum(p.severity == ERROR for p in problems)
    warns = len(problems) - errors
    name = f"{raw_dataset_folder}: " if raw_dataset_folder is not None else ""
    verdict = "dataset is OK" if errors == 0 else "dataset has errors; fix them before planning"
    lines = [str(p) for p in problems] + [f"{name}{errors} error(s), {warns} warning(s): {verdict}"]
    return "\n".join(lines)


@dataclass(frozen=True)
class CaseExpectation:
    """What the files of every case must satisfy (None: unknown because dataset.json is broken there)."""

    reader: str
    num_channels: int | None
    allowed_labels: tuple[int, ...] | None
    not_drawn: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # annotated_labels: case -> absent labels


def verify_dataset(raw_dataset_folder: Path, *, num_processes: int | None = None) -> list[Problem]:
    """Check a raw dataset folder (``dataset.json``, ``imagesTr``, ``labelsTr``) and return every problem found.

    Args:
        raw_dataset_folder: ``nnUNet_raw/DatasetXXX_Name``.
        num_processes: worker processes (spawn) reading the files; default ``min(8, cpu count)``; 1 reads in this process.

    Returns:
        Errors and warnings in file order; no error means the dataset can be planned.
    """
    folder = Path(raw_dataset_folder)
    if not folder.is_dir():
        return [Problem(ERROR, folder, "the raw dataset folder does not exist",
                        "check the dataset id and nnUNet_raw (`nnseg paths` shows it)")]
    problems, d = _check_json(folder / "dataset.json")
    if d is None or not isinstance(d.get("file_ending"), str):
        return problems
    spec = _lenient_spec(d)
    try:
        cases = training_cases(folder, spec)
    except ValueError as e:
        return problems + [Problem(ERROR, folder / "dataset.json", str(e), "fix the 'dataset' entry")]
    problems += _check_layout(folder, spec, cases, d)
    problems += _partial_problems(folder / "dataset.json", d, cases)
    expect = _expectations(folder, spec, cases, d, problems)
    if expect is not None:
        problems += _read_all(cases, expect, num_processes or default_num_processes())
    return problems


def _check_json(path: Path) -> tuple[list[Problem], dict[str, Any] | None]:
    if not path.is_file():
        return [Problem(ERROR, path, "dataset.json is missing", "write it (keys channel_names, labels, numTraining, "
                        "file_ending; see nnU-Net's dataset_format documentation)")], None
    try:
        d = load_json(path)
    except ValueError as e:
        return [Problem(ERROR, path, str(e), "fix the JSON syntax")], None
    problems = [Problem(ERROR, path, msg, "edit dataset.json as the message says") for msg in dataset_json_problems(d)]
    if isinstance(d, dict) and "modality" in d and "channel_names" not in d:
        problems.append(Problem(WARNING, path, "uses the legacy key 'modality'", "rename it to 'channel_names'"))
    return problems, d if isinstance(d, dict) else None


def _lenient_spec(d: Mapping[str, Any]) -> DatasetSpec:
    """A spec from a possibly broken dict: what cannot be trusted is left empty (its checks are skipped)."""
    channels = d.get("channel_names", d.get("modality"))
    labels = d.get("labels")
    return DatasetSpec(
        channel_names=dict(channels) if isinstance(channels, Mapping) else {},
        labels=dict(labels) if isinstance(labels, Mapping) else {},
        num_training=d["numTraining"] if isinstance(d.get("numTraining"), int) else -1,
        file_ending=d["file_ending"],
        overwrite_image_reader_writer=d.get("overwrite_image_reader_writer"),
        dataset=d.get("dataset") if isinstance(d.get("dataset"), Mapping) else None,
    )


def _check_layout(folder: Path, spec: DatasetSpec, cases: list[CaseFiles], d: Mapping[str, Any]) -> list[Problem]:
    """File-name level checks: case count, misnamed/missing/extra channel files, missing labels."""
    problems: list[Problem] = []
    ending = spec.file_ending
    if spec.dataset is None:
        if not (folder / "imagesTr").is_dir():
            problems.append(Problem(ERROR, folder / "imagesTr", "the training image folder is missing",
                                    f"put the training images there as CASE_0000{ending}"))
        _, misnamed = scan_channel_files(folder / "imagesTr", ending)
        problems += [Problem(ERROR, p, "image file name has no 4-digit channel suffix",
                             f"rename it to <case>_0000{ending} (and _0001, ... for further channels)") for p in misnamed]
    problems += _case_set_problems(folder, spec, cases)
    for case in cases:
        problems += _case_files_problems(case, spec, explicit=spec.dataset is not None)
    return problems


def _case_set_problems(folder: Path, spec: DatasetSpec, cases: list[CaseFiles]) -> list[Problem]:
    """Cases that would be dropped: labels without images, and ``numTraining`` other than the cases found."""
    problems = [] if spec.dataset is not None else _orphan_labels(folder, spec.file_ending,
                                                                   {c.identifier for c in cases})
    if spec.num_training >= 0 and spec.num_training != len(cases):
        problems.append(Problem(ERROR, folder / "dataset.json",
                                f"numTraining is {spec.num_training} but {len(cases)} training cases were found",
                                f"set \"numTraining\": {len(cases)} or add/remove cases"))
    return problems


def _orphan_labels(folder: Path, ending: str, identifiers: set[str]) -> list[Problem]:
    """A label in labelsTr without images in imagesTr: its case would be left out of the training (an error)."""
    labels = folder / "labelsTr"
    if not labels.is_dir():
        return []
    return [Problem(ERROR, p, f"the images of case {p.name[:-len(ending)]!r} are missing: its label exists but "
                    f"imagesTr holds no {p.name[:-len(ending)]}_0000{ending}",
                    f"add {p.name[:-len(ending)]}_0000{ending} (and further channels) to imagesTr, or remove the label")
            for p in sorted(labels.iterdir()) if p.name.endswith(ending) and not p.name.startswith(".")
            and p.name[: -len(ending)] not in identifiers]


def _case_files_problems(case: CaseFiles, spec: DatasetSpec, *, explicit: bool) -> list[Problem]:
    problems = []
    n = spec.num_channels
    if not explicit and n:
        folder = case.images[0].parent
        wanted = [folder / f"{case.identifier}_{c:04d}{spec.file_ending}" for c in range(n)]
        if n in (3, 4) and list(case.images) == wanted[:1]:
            wanted = wanted[:1]  # one RGB(A) file may hold every channel, as nnU-Net accepts; the reader decides
        problems += [Problem(ERROR, p, f"channel file of case {case.identifier!r} is missing (dataset.json declares "
                             f"{n} channel(s))", "add the file, or fix channel_names in dataset.json")
                     for p in wanted if p not in case.images]
        problems += [Problem(ERROR, p, f"wrong number of channels: case {case.identifier!r} has a channel file beyond "
                             f"the {n} declared in channel_names", "remove the file, or declare the channel in "
                             "channel_names") for p in case.images if p not in wanted]
    elif explicit:
        if n and len(case.images) != n:
            problems.append(Problem(ERROR, None, f"wrong number of channels: case {case.identifier!r} lists "
                                    f"{len(case.images)} images, channel_names declares {n}",
                                    "fix the 'dataset' entry or channel_names"))
        problems += [Problem(ERROR, p, f"image of case {case.identifier!r} is missing", "fix the path in the "
                             "'dataset' entry of dataset.json") for p in case.images if not p.is_file()]
    if case.label is None or not case.label.is_file():
        problems.append(Problem(ERROR, case.label, f"label file of case {case.identifier!r} is missing",
                                "add the label map (labelsTr/<case><file_ending>) or remove the case's images"))
    return problems


def _expectations(folder: Path, spec: DatasetSpec, cases: list[CaseFiles], d: Mapping[str, Any],
                  problems: list[Problem]) -> CaseExpectation | None:
    """Pick the reader (appends a problem and returns None when no reader fits)."""
    from nnseg.raw.image_io import determine_io

    examples = [p for c in cases for p in c.images if p.is_file()][:_MAX_EXAMPLES]
    if not examples:
        found = endings_found(folder / "imagesTr")
        seen = f" (imagesTr holds files ending in {found})" if found else ""
        problems.append(Problem(ERROR, folder / "imagesTr", f"no training image with file_ending "
                                f"{spec.file_ending!r} found{seen}", f"name the training images CASE_0000"
                                f"{spec.file_ending}, or set file_ending in dataset.json to the files' ending"))
        return None
    failures = []
    for example in examples:  # a corrupt first file must not hide the reader (it is reported per case later)
        try:
            io = determine_io(spec.file_ending, example, overwrite=spec.overwrite_image_reader_writer)
            break
        except (ValueError, FileNotFoundError) as e:
            failures.append(Problem(ERROR, example, str(e), "fix file_ending or overwrite_image_reader_writer"))
    else:
        problems.append(failures[0])
        return None
    labels_ok = "labels" in d and not labels_problems(d)
    allowed = tuple(spec.allowed_label_values) if labels_ok else None
    return CaseExpectation(reader=io.name, num_channels=spec.num_channels or None, allowed_labels=allowed,
                           not_drawn=_not_drawn(d) if labels_ok else {})


def _not_drawn(d: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Per case of ``annotated_labels``: the label values it says it does not draw (label datasets only: in a region
    dataset an undrawn region's labels may still be drawn as parts of other regions)."""
    if partial_labels_problems(d) or not d.get(PARTIAL_KEY):
        return {}
    spec = _lenient_spec(d)
    partial = PartialLabels.from_dataset_json(d, spec.foreground_labels_or_regions)
    if partial is None or spec.has_regions:
        return {}
    return {case: tuple(int(v) for v in partial.missing(case)) for case in partial.annotated}  # type: ignore[arg-type]


def _partial_problems(path: Path, d: Mapping[str, Any], cases: list[CaseFiles]) -> list[Problem]:
    """``annotated_labels`` naming cases the dataset lacks."""
    listed = d.get(PARTIAL_KEY)
    if not isinstance(listed, Mapping) or not listed:
        return []
    unknown = sorted(set(listed) - {c.identifier for c in cases})
    if not unknown:
        return []
    return [Problem(ERROR, path, f"{PARTIAL_KEY} names {len(unknown)} case(s) that are not training cases: {unknown[:5]}",
                    "use the case identifiers of imagesTr/labelsTr (file names without _0000 and the ending)")]


def _read_all(cases: list[CaseFiles], expect: CaseExpectation, num_processes: int) -> list[Problem]:
    jobs = [(c, expect) for c in cases]
    results = spawn_map(check_case, jobs, num_processes=num_processes, star=True)
    return [p for r in results for p in r]


def check_case(case: CaseFiles, expect: CaseExpectation) -> list[Problem]:
    """Read one case's images and label and check them (a top-level function: runs in spawn workers)."""
    from nnseg.raw.image_io import get_io

    io = get_io(expect.reader)
    problems: list[Problem] = []
    images = []
    for path in (p for p in case.images if p.is_file()):  # missing files are reported by the layout check
        got = _read(io.read_images, [path], path, problems)
        if got is not None:
            images.append((path, *got))
            problems += _image_content_problems(path, got[0])
    label = _read(io.read_seg, case.label, case.label, problems) if case.label and case.label.is_file() else None
    if images:
        problems += _channel_count_problems(case, images, expect)
        ref_path, ref_data, ref_geo = images[0]
        for path, data, geo in images[1:]:
            problems += _geometry_problems(path, data, geo, ref_path, ref_data, ref_geo)
        if label is not None:
            problems += _geometry_problems(case.label, label[0], label[1], ref_path, ref_data, ref_geo)
    if label is not None and expect.allowed_labels is not None:
        problems += _label_value_problems(case.label, label[0], expect.allowed_labels)
    if label is not None and expect.not_drawn.get(case.identifier):
        problems += _undrawn_problems(case, label[0], expect.not_drawn[case.identifier])
    return problems


def _undrawn_problems(case: CaseFiles, seg: np.ndarray, absent: Sequence[int]) -> list[Problem]:
    found = sorted(int(v) for v in np.unique(seg) if int(v) in absent)
    if not found:
        return []
    return [Problem(ERROR, case.label, f"case {case.identifier!r} holds label(s) {found} that dataset.json's "
                    f"{PARTIAL_KEY} says it does not annotate", f"add them to {PARTIAL_KEY}[{case.identifier!r}] or "
                    "remove the case from the key if it is fully annotated")]


def _read(fn: Any, arg: Any, path: Path, problems: list[Problem]) -> tuple[np.ndarray, Any] | None:
    """Call a reader; any failure becomes an "unreadable" error, reader warnings become warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn(arg)
        except Exception as e:  # every library raises its own types: any failure means "unreadable"
            text = str(e).splitlines()[0] if str(e) else ""
            problems.append(Problem(ERROR, path, f"unreadable or corrupt file ({type(e).__name__}: {text})",
                                    "re-export or replace the file"))
            return None
    problems += [Problem(WARNING, path, f"reader warning: {w.message}", "check the file") for w in caught]
    return out


def _image_content_problems(path: Path, data: np.ndarray) -> list[Problem]:
    if bool(np.isfinite(data).all()):
        return []
    n_nan = int(np.isnan(data).sum())
    n_inf = int(np.isinf(data).sum())
    found = " and ".join(t for t in (f"{n_nan} NaN value(s)" if n_nan else "",
                                     f"{n_inf} infinite value(s)" if n_inf else "") if t)
    return [Problem(ERROR, path, f"image contains {found}",
                    "replace them (e.g. with 0 or the background intensity) and save the image again")]


def _channel_count_problems(case: CaseFiles, images: list[tuple[Path, np.ndarray, Any]],
                            expect: CaseExpectation) -> list[Problem]:
    n = expect.num_channels
    total = sum(data.shape[0] for _, data, _ in images)
    if n is None or total == n or len(images) != n:
        return []
    counts = {str(p): int(data.shape[0]) for p, data, _ in images}
    return [Problem(ERROR, images[0][0], f"wrong number of channels: the files of case {case.identifier!r} hold "
                    f"{total} channels {counts}, channel_names declares {n}",
                    "store one channel per file (split 4D/RGB files into CASE_0000, CASE_0001, ...) or fix channel_names")]


def _geometry_problems(path: Path, data: np.ndarray, geo: Any, ref_path: Path, ref_data: np.ndarray,
                       ref_geo: Any) -> list[Problem]:
    """Shape and spacing must match the case's first image (errors); origin/direction/affine only warn."""
    problems = []
    if data.shape[1:] != ref_data.shape[1:]:
        problems.append(Problem(ERROR, path, f"shape mismatch: {tuple(data.shape[1:])} but {ref_path.name} has "
                                f"{tuple(ref_data.shape[1:])}", f"resample or crop it to the voxel grid of {ref_path.name}"))
    if not _close(geo.spacing, ref_geo.spacing):
        problems.append(Problem(ERROR, path, f"spacing mismatch: {tuple(geo.spacing)} but {ref_path.name} has "
                                f"{tuple(ref_geo.spacing)}", f"give it the spacing of {ref_path.name} (resample if the "
                                "grids really differ)"))
    for attr in ("origin", "direction", "affine"):
        a, b = getattr(geo, attr), getattr(ref_geo, attr)
        if a is not None and b is not None and not _close(a, b):
            problems.append(Problem(WARNING, path, f"{attr} mismatch with {ref_path.name} ({a} vs {b})",
                                    "check that image and label overlap in a viewer; copy the header if they do"))
    return problems


def _close(a: Any, b: Any) -> bool:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-4, atol=1e-6))


def _label_value_problems(path: Path, seg: np.ndarray, allowed: tuple[int, ...]) -> list[Problem]:
    values = np.unique(seg)
    bad = values[~np.isin(values, np.asarray(allowed, dtype=np.float64))]
    if bad.size == 0:
        return []
    shown = [int(v) if float(v).is_integer() else float(v) for v in bad[:10]]
    return [Problem(ERROR, path, f"label values {shown} are not declared in dataset.json (declared: {list(allowed)})",
                    "declare them in dataset.json 'labels' or correct the label map")]
