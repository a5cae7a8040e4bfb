"""Plans schema: exact JSON round-trip of nnU-Net's plans files, inheritance, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnseg.plans.schema import ConfigurationPlans, Plans, load_plans, plans_to_text, save_plans

DATASETS = ("Dataset004_Hippocampus", "Dataset901_SynthAniso", "Dataset120_ISBI2012")


@pytest.mark.parametrize("dataset", DATASETS)
def test_golden_plans_round_trip_byte_equal(expected_dir: Path, tmp_path: Path, dataset: str) -> None:
    src = expected_dir / dataset / "nnUNetPlans.json"
    plans = load_plans(src)
    out = tmp_path / "plans.json"
    save_plans(plans, out)
    original = json.loads(src.read_text())
    assert json.loads(out.read_text()) == original
    assert out.read_text() == json.dumps(original, indent=4)
    assert out.read_text() == src.read_text()


def test_every_golden_configuration_resolves(expected_dir: Path) -> None:
    plans = load_plans(expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json")
    assert plans.available_configurations == ["2d", "3d_fullres"]
    cfg = plans.configuration("3d_fullres")
    assert isinstance(cfg, ConfigurationPlans)
    assert cfg.patch_size == (40, 56, 40) and cfg.batch_size == 7 and cfg.ndim == 3
    assert cfg.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert cfg.to_json() == plans.configurations["3d_fullres"]


def _plans_with_user_configs(expected_dir: Path) -> Plans:
    d = json.loads((expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text())
    d["configurations"]["3d_fullres_bs16"] = {"inherits_from": "3d_fullres", "batch_size": 16, "my_key": [1, 2]}
    d["configurations"]["3d_fullres_bs16_big"] = {"inherits_from": "3d_fullres_bs16", "patch_size": [48, 64, 48]}
    d["my_top_level"] = {"a": 1}
    return Plans.from_json(d)


def test_inheritance_resolves_recursively_and_keeps_unknown_keys(expected_dir: Path, tmp_path: Path) -> None:
    plans = _plans_with_user_configs(expected_dir)
    cfg = plans.configuration("3d_fullres_bs16_big")
    assert cfg.batch_size == 16 and cfg.patch_size == (48, 64, 48)
    assert cfg.spacing == (1.0, 1.0, 1.0)
    assert cfg.extra == {"inherits_from": "3d_fullres_bs16", "my_key": [1, 2]}
    save_plans(plans, tmp_path / "p.json")
    again = load_plans(tmp_path / "p.json")
    assert again.to_json() == plans.to_json()
    assert list(again.to_json())[-1] == "my_top_level"
    assert again.configurations["3d_fullres_bs16"] == {"inherits_from": "3d_fullres", "batch_size": 16,
                                                       "my_key": [1, 2]}


def test_unknown_configuration_lists_available(expected_dir: Path) -> None:
    plans = load_plans(expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json")
    with pytest.raises(ValueError, match=r"3d_lowres.*available: \['2d', '3d_fullres'\]"):
        plans.configuration("3d_lowres")


def test_inheritance_cycle_and_missing_parent_raise(expected_dir: Path) -> None:
    d = json.loads((expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text())
    d["configurations"]["a"] = {"inherits_from": "b"}
    d["configurations"]["b"] = {"inherits_from": "a"}
    d["configurations"]["c"] = {"inherits_from": "nope"}
    plans = Plans.from_json(d)
    with pytest.raises(ValueError, match="cycle"):
        plans.configuration("a")
    with pytest.raises(ValueError, match="'nope' .*inherited by 'c'"):
        plans.configuration("c")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_and_preprocess"):
        load_plans(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"dataset_name": "x"}')
    with pytest.raises(ValueError, match="bad.json lacks the keys"):
        load_plans(tmp_path / "bad.json")


def test_save_is_atomic_on_error(tmp_path: Path, expected_dir: Path) -> None:
    plans = load_plans(expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json")
    out = tmp_path / "p.json"
    out.write_text("old")
    bad = Plans.from_json({**plans.to_json(), "extra_obj": object()})
    with pytest.raises(TypeError):
        save_plans(bad, out)
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]
    assert plans_to_text(plans) == json.dumps(plans.to_json(), indent=4)


def test_old_flat_format_is_migrated_on_access(expected_dir: Path) -> None:
    d = json.loads((expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text())
    new = d["configurations"]["3d_fullres"]
    kw = new["architecture"]["arch_kwargs"]
    old = {k: v for k, v in new.items() if k != "architecture"}
    old.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 32, "unet_max_num_features": 320,
                "n_conv_per_stage_encoder": kw["n_conv_per_stage"], "n_conv_per_stage_decoder": [2, 2, 2],
                "num_pool_per_axis": [3, 3, 3], "pool_op_kernel_sizes": kw["strides"],
                "conv_kernel_sizes": kw["kernel_sizes"]})
    d["configurations"]["3d_fullres"] = old
    plans = Plans.from_json(d)
    assert plans.configuration("3d_fullres").architecture == new["architecture"]
    assert plans.configurations["3d_fullres"] == old  # the file content is not rewritten
    old["UNet_class_name"] = "MyUNet"
    with pytest.raises(ValueError, match="MyUNet"):
        Plans.from_json(d).configuration("3d_fullres")


def test_optional_top_level_keys_may_be_missing(expected_dir: Path) -> None:
    d = json.loads((expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text())
    props = d.pop("foreground_intensity_properties_per_channel")
    d["foreground_intensity_properties_by_modality"] = props
    for key in ("label_manager", "experiment_planner_used", "original_median_shape_after_transp"):
        del d[key]
    plans = Plans.from_json(d)
    assert plans.label_manager is None and plans.experiment_planner_used is None
    assert plans.foreground_intensity_properties_per_channel == props
    assert plans.to_json() == d  # nothing added on write
    assert plans.configuration("2d").batch_size == 281
