"""Moving plans across channel counts: topology, patch and spacing from the source, normalisation from the target."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinydata import tiny_plans

from nnseg.jsonio import save_json
from nnseg.plans.move import move_plans_between_datasets
from nnseg.plans.schema import save_plans
from nnseg.raw.demo_data import make_demo_dataset


def _fingerprint(folder: Path, channels: int) -> None:
    stats = {"max": 9.0, "mean": 2.0, "median": 2.0, "min": -1.0, "percentile_00_5": -1.0, "percentile_99_5": 8.0,
             "std": 1.5}
    save_json({"median_relative_size_after_cropping": 0.5,
               "foreground_intensity_properties_per_channel": {str(c): {**stats, "mean": 2.0 + c}
                                                               for c in range(channels)}},
              folder / "dataset_fingerprint.json")


def test_plans_move_from_one_to_two_channels(tmp_path: Path) -> None:
    raw = make_demo_dataset(tmp_path / "raw" / "Dataset002_Two", num_cases=2, num_channels=2, shape=(8, 8, 8),
                            num_test=0)
    src = tiny_plans()
    save_plans(src, tmp_path / "src.json")
    target_file = tmp_path / "pre" / "Dataset002_Two" / "nnUNetMovedPlans.json"
    target_file.parent.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nnUNetv2_extract_fingerprint -d Dataset002_Two"):
        move_plans_between_datasets(tmp_path / "src.json", raw, target_file, target_dataset_name="Dataset002_Two")
    assert not target_file.exists()
    _fingerprint(target_file.parent, 2)
    moved = move_plans_between_datasets(tmp_path / "src.json", raw, target_file, target_dataset_name="Dataset002_Two")
    a, b = src.configuration("3d_fullres"), moved.configuration("3d_fullres")
    assert b.patch_size == a.patch_size and b.spacing == a.spacing and b.architecture == a.architecture
    assert len(b.normalization_schemes) == 2 and len(b.use_mask_for_norm) == 2
    assert b.use_mask_for_norm == (True, True)  # median relative size 0.5 < 0.75: Z-score uses the mask
    intensity = moved.foreground_intensity_properties_per_channel
    assert sorted(intensity) == ["0", "1"] and intensity["1"]["mean"] == 3.0
    assert moved.dataset_name == "Dataset002_Two" and target_file.is_file()
