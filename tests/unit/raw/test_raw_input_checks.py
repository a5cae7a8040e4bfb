"""The always-on per-case checks of fingerprinting/preprocessing (nnseg.raw.input_checks) on arrays."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from nnseg.raw.discover import CaseFiles
from nnseg.raw.input_checks import CaseRules, check_case_arrays, planned_dims

CASE = CaseFiles("case_007", (Path("/raw/imagesTr/case_007_0000.nii.gz"), Path("/raw/imagesTr/case_007_0001.nii.gz")),
                 Path("/raw/labelsTr/case_007.nii.gz"))
RULES = CaseRules(num_channels=2, allowed_labels=(0, 1, 2))


def _arrays(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(2, 4, 5, 6)).astype(np.float32), rng.integers(0, 3, size=(1, 4, 5, 6)).astype(np.float32)


def test_a_good_case_passes(rng: np.random.Generator) -> None:
    check_case_arrays(CASE, *_arrays(rng), RULES)
    check_case_arrays(CASE, *_arrays(rng), CaseRules(2, (0, 1, 2), planned_dims=3))


def test_non_finite_voxel_names_its_channel_file(rng: np.random.Generator) -> None:
    images, seg = _arrays(rng)
    images[1, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"case_007_0001\.nii\.gz: image contains 1 infinite value"):
        check_case_arrays(CASE, images, seg, RULES)


@pytest.mark.parametrize("value, shown", [(5.0, "[5]"), (1.5, "[1.5]"), (-1.0, "[-1]")])
def test_undeclared_or_fractional_labels(rng: np.random.Generator, value: float, shown: str) -> None:
    images, seg = _arrays(rng)
    seg[0, 1, 1, 1] = value
    with pytest.raises(ValueError, match=re.escape(f"labelsTr/case_007.nii.gz: label values {shown} are not declared")):
        check_case_arrays(CASE, images, seg, RULES)


def test_label_with_two_channels_and_wrong_grid(rng: np.random.Generator) -> None:
    images, seg = _arrays(rng)
    with pytest.raises(ValueError, match="holds 2 channels"):
        check_case_arrays(CASE, images, np.concatenate([seg, seg]), RULES)
    with pytest.raises(ValueError, match=r"label map's shape \(4, 5, 5\) differs"):
        check_case_arrays(CASE, images, seg[..., :5], RULES)


def test_channel_count(rng: np.random.Generator) -> None:
    images, seg = _arrays(rng)
    with pytest.raises(ValueError, match="hold 2 channel\\(s\\), dataset.json channel_names declares 3"):
        check_case_arrays(CASE, images, seg, CaseRules(3, (0, 1, 2)))


def test_2d_vs_3d_against_the_plans(rng: np.random.Generator) -> None:
    images, seg = _arrays(rng)
    assert planned_dims([1, 64, 64]) == 2 and planned_dims([20, 64, 64]) == 3
    with pytest.raises(ValueError, match="a volume of 4 slices .* plans were made from 2D images"):
        check_case_arrays(CASE, images, seg, CaseRules(2, (0, 1, 2), planned_dims=2))
    with pytest.raises(ValueError, match="a 2D image .* plans were made from volumes"):
        check_case_arrays(CASE, images[:, :1], seg[:, :1], CaseRules(2, (0, 1, 2), planned_dims=3))
