"""Prediction input checks (nnseg.predictions.run.input_checks) against plans: 2D vs 3D and the upsampling rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from nnseg.plans.schema import Plans
from nnseg.predictions.run.input_checks import check_prediction_case

FILE = [Path("/in/case_0000.nii.gz")]


@pytest.fixture
def plans(expected_dir: Path) -> Plans:
    return Plans.from_json(json.loads((expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text()))


def test_a_volume_of_the_training_kind_passes(plans: Plans) -> None:
    cfg = plans.configuration("3d_fullres")
    check_prediction_case(FILE, np.zeros((1, 36, 50, 35), np.float32), (1.0, 1.0, 1.0), plans=plans, configuration=cfg)
    check_prediction_case(FILE, np.zeros((1, 36, 50, 35), np.float32), (1.0, 1.0, 1.0), plans=plans,
                          configuration=plans.configuration("2d"))


def test_upsampling_rule_uses_the_transposed_target_spacing(plans: Plans) -> None:
    cfg = plans.configuration("3d_fullres")  # spacing 1 mm everywhere
    data = np.zeros((1, 8, 50, 35), np.float32)
    check_prediction_case(FILE, data, (16.0, 1.0, 1.0), plans=plans, configuration=cfg)  # exactly 16x: allowed
    with pytest.raises(ValueError, match=r"upsample axis 0 17 times \(8 -> 136 voxels\)"):
        check_prediction_case(FILE, data, (17.0, 1.0, 1.0), plans=plans, configuration=cfg)
    # the 2D configuration keeps the image's own spacing along axis 0: thick slices are fine there
    check_prediction_case(FILE, data, (17.0, 1.0, 1.0), plans=plans, configuration=plans.configuration("2d"))


def test_volume_for_a_model_planned_from_2d_images(plans: Plans) -> None:
    flat = Plans.from_json(dict(copy.deepcopy(plans.to_json()), original_median_shape_after_transp=[1, 64, 64]))
    with pytest.raises(ValueError, match="volume of 36 slices .* planned from 2D images"):
        check_prediction_case(FILE, np.zeros((1, 36, 50, 35), np.float32), (1.0, 1.0, 1.0), plans=flat,
                              configuration=flat.configuration("2d"))
    check_prediction_case(FILE, np.zeros((1, 1, 50, 35), np.float32), (999.0, 1.0, 1.0), plans=flat,
                          configuration=flat.configuration("2d"))
