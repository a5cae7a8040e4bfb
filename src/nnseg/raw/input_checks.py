"""Cheap checks made on every training case while fingerprinting and preprocessing (always on).

``nnseg verify`` (``--verify_dataset_integrity``) reads every case and reports every problem of the dataset. These
checks run on the arrays that fingerprinting and preprocessing read anyway and stop at the first bad case, naming
the file and the fix, so that bad data never reaches the plans or the training (a NaN voxel would make every loss
NaN, an undeclared label fails deep in training with "index out of bounds"):

* before reading: every channel file declared in ``channel_names`` exists, and so does the label file; no label
  lacks its images and ``numTraining`` equals the cases found (else a case would be dropped silently);
* after reading: finite intensities; as many channels as declared (a 4D file holds several); a label map of one
  channel on the image's voxel grid; label values declared in ``dataset.json``; and, once plans exist, 2D vs 3D:
  a 2D image (one slice) in a dataset planned from volumes, or a volume in a dataset planned from 2D images.

The checks reuse the per-case checks of :mod:`nnseg.raw.verify`, so both name a problem the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnseg.raw.dataset_json import DatasetSpec
from nnseg.raw.discover import CaseFiles
from nnseg.raw.verify import (
    ERROR,
    Problem,
    _case_files_problems,
    _case_set_problems,
    _image_content_problems,
    _label_value_problems,
)

_SHOWN = 5  # problems listed in one error


@dataclass(frozen=True)
class CaseRules:
    """What every case of a dataset must satisfy.

    Attributes:
        num_channels: channels declared in ``channel_names``.
        allowed_labels: label values declared in ``labels`` (ignore label included).
        planned_dims: 2 when the plans were made from 2D images, 3 from volumes, None before planning.
    """

    num_channels: int
    allowed_labels: tuple[int, ...]
    planned_dims: int | None = None

    @classmethod
    def from_spec(cls, spec: DatasetSpec, *, planned_dims: int | None = None) -> "CaseRules":
        return cls(spec.num_channels, tuple(int(v) for v in spec.allowed_label_values), planned_dims)


def planned_dims(original_median_shape_after_transp: Sequence[int]) -> int:
    """2 when the plans' median case shape has one slice (the planner then plans 2D only), else 3."""
    return 2 if int(original_median_shape_after_transp[0]) == 1 else 3


def raise_first_errors(problems: Sequence[Problem], *, dataset_hint: str = "") -> None:
    """Raise ValueError listing the first errors of ``problems`` (warnings are ignored); nothing when there is none."""
    errors = [p for p in problems if p.severity == ERROR]
    if not errors:
        return
    more = f" (and {len(errors) - _SHOWN} more)" if len(errors) > _SHOWN else ""
    lines = "\n  ".join(f"{p.file}: {p.message}; fix: {p.fix}" if p.file else f"{p.message}; fix: {p.fix}"
                        for p in errors[:_SHOWN])
    hint = dataset_hint or "`nnseg verify -d ...` (--verify_dataset_integrity) lists every problem of the dataset"
    raise ValueError(f"refusing the dataset: {lines}{more}\n  {hint}")


def check_case_layout(raw_dataset_folder: Path, cases: Sequence[CaseFiles], spec: DatasetSpec) -> None:
    """Every declared channel file and every label file exists, every label in labelsTr has its images, and
    ``numTraining`` is the number of cases found (file names only, nothing is read).

    Raises:
        ValueError: naming the missing (or undeclared extra) files or the case count, and the fix.
    """
    explicit = spec.dataset is not None
    problems = _case_set_problems(Path(raw_dataset_folder), spec, list(cases))
    raise_first_errors(problems + [p for c in cases for p in _case_files_problems(c, spec, explicit=explicit)])


def check_case_arrays(case: CaseFiles, images: np.ndarray, seg: np.ndarray | None, rules: CaseRules) -> None:
    """Check one case as read: ``images`` ``(C, X, Y, Z)`` from ``case.images``, ``seg`` ``(1, X, Y, Z)`` or None.

    Raises:
        ValueError: the first problems, each with its file and the fix.
    """
    files = list(case.images)
    per_file = len(files) == images.shape[0]
    problems = []
    for c in range(images.shape[0]):
        problems += _image_content_problems(files[c] if per_file else files[0], images[c])
    if images.shape[0] != rules.num_channels:
        problems.append(Problem(ERROR, files[0] if len(files) == 1 else None,
                                f"wrong number of channels: the files of case {case.identifier!r} ({_names(files)}) "
                                f"hold {images.shape[0]} channel(s), dataset.json channel_names declares "
                                f"{rules.num_channels}", "store one 3D (or 2D) image per channel file: split a 4D "
                                "file into CASE_0000, CASE_0001, ... (`nnseg convert-msd` does it for MSD data)"))
    if seg is not None:
        problems += _label_problems(case, images, seg, rules)
    problems += _dims_problems(case, images, rules)
    raise_first_errors(problems)


def _label_problems(case: CaseFiles, images: np.ndarray, seg: np.ndarray, rules: CaseRules) -> list[Problem]:
    label = case.label
    if seg.shape[0] != 1:
        return [Problem(ERROR, label, f"the label map holds {seg.shape[0]} channels (a 4D file)",
                        "store the label map as one 3D (or 2D) image of integer labels")]
    if tuple(seg.shape[1:]) != tuple(images.shape[1:]):
        return [Problem(ERROR, label, f"shape mismatch: the label map's shape {tuple(seg.shape[1:])} differs from "
                        f"the shape {tuple(images.shape[1:])} of the images of case {case.identifier!r}",
                        "give the label map the voxel grid of the case's images")]
    if not np.isfinite(seg).all():
        return [Problem(ERROR, label, "the label map contains NaN or infinite values",
                        "store integer labels as declared in dataset.json 'labels'")]
    if _labels_within(seg, rules.allowed_labels):
        return []
    return _label_value_problems(label, seg, rules.allowed_labels)  # type: ignore[arg-type]


def _labels_within(seg: np.ndarray, allowed: Sequence[int]) -> bool:
    """Fast path: integer values whose whole [min, max] range is declared (no sort of the voxels)."""
    lo, hi = float(seg.min()), float(seg.max())
    declared = set(allowed)
    if not (lo.is_integer() and hi.is_integer()) or any(v not in declared for v in range(int(lo), int(hi) + 1)):
        return False
    return bool(np.array_equal(seg, np.floor(seg)))


def _dims_problems(case: CaseFiles, images: np.ndarray, rules: CaseRules) -> list[Problem]:
    if rules.planned_dims is None:
        return []
    dims = 2 if images.shape[1] == 1 else 3
    if dims == rules.planned_dims:
        return []
    what = "a 2D image (one slice)" if dims == 2 else f"a volume of {images.shape[1]} slices"
    planned = "volumes (3D)" if rules.planned_dims == 3 else "2D images"
    return [Problem(ERROR, case.images[0], f"case {case.identifier!r} is {what} of shape {tuple(images.shape[1:])}, "
                    f"but the plans were made from {planned}",
                    "remove the case, or put it in a dataset of its own kind and plan that one")]


def _names(files: Sequence[Path]) -> str:
    return ", ".join(Path(f).name for f in files)
