"""The planner reproduces nnU-Net v2's plans files for the golden datasets, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnseg.plans.planner import plan_experiment
from nnseg.plans.schema import plans_to_text

pytestmark = pytest.mark.golden

DATASETS = ("Dataset004_Hippocampus", "Dataset901_SynthAniso", "Dataset120_ISBI2012")


def _load(folder: Path) -> tuple[dict, dict, dict]:
    return tuple(json.loads((folder / f).read_text())  # type: ignore[return-value]
                 for f in ("dataset_fingerprint.json", "dataset.json", "nnUNetPlans.json"))


def _diff(got: dict, expected: dict) -> list[str]:
    out = [f"{k}: {got.get(k)!r} != {expected.get(k)!r}" for k in expected
           if k != "configurations" and got.get(k) != expected.get(k)]
    for name in sorted(set(got["configurations"]) | set(expected["configurations"])):
        g, e = got["configurations"].get(name), expected["configurations"].get(name)
        if g is None or e is None:
            out.append(f"configuration {name}: planned={g is not None} expected={e is not None}")
            continue
        out += [f"{name}.{k}: {g.get(k)!r} != {e.get(k)!r}" for k in sorted(set(g) | set(e)) if g.get(k) != e.get(k)]
    return out


@pytest.mark.parametrize("dataset", DATASETS)
def test_plans_match_nnunet_exactly(expected_dir: Path, dataset: str) -> None:
    fingerprint, dataset_json, expected = _load(expected_dir / dataset)
    plans = plan_experiment(fingerprint, dataset_json, dataset_name=dataset,
                            image_reader_writer=expected["image_reader_writer"])
    assert _diff(plans.to_json(), expected) == []
    # same configurations, key order, int/float types and formatting
    assert plans_to_text(plans) == json.dumps(expected, indent=4)
    assert plans_to_text(plans) == (expected_dir / dataset / "nnUNetPlans.json").read_text()


def test_dataclass_and_dict_inputs_agree(expected_dir: Path) -> None:
    from nnseg.raw.dataset_json import DatasetSpec

    fingerprint_module = pytest.importorskip("nnseg.fingerprint.fingerprint")
    fingerprint, dataset_json, expected = _load(expected_dir / "Dataset901_SynthAniso")
    plans = plan_experiment(fingerprint_module.Fingerprint.from_json(fingerprint), DatasetSpec.from_json(dataset_json),
                            dataset_name="Dataset901_SynthAniso", image_reader_writer="SimpleITKIO")
    assert plans.to_json() == expected


def test_hippocampus_batch_size_cap_uses_num_training(expected_dir: Path) -> None:
    # the reference notes that with all 260 MSD cases the 5 % cap gives batch size 9 for 3d_fullres
    fingerprint, dataset_json, _ = _load(expected_dir / "Dataset004_Hippocampus")
    dataset_json["numTraining"] = 260
    plans = plan_experiment(fingerprint, dataset_json, dataset_name="Dataset004_Hippocampus",
                            image_reader_writer="SimpleITKIO")
    assert plans.configuration("3d_fullres").batch_size == 9


# Large datasets (patch shrinking, 3d_lowres search) are not covered by the shared golden files. These values come
# from nnUNetPlans.json files written by nnU-Net v2 and published with two public projects (an FDG PET/CT dataset and
# a kidney CT dataset); the fingerprints are rebuilt from the plans' median spacing and shape.
PUBLISHED = {
    "petct": dict(
        spacing=[3.0, 2.0364201068878174, 2.0364201068878174], shapes=[[326, 400, 400]], n=1014,
        channels={"0": "PET", "1": "CT"}, num_labels=2,
        expected={
            "2d": (16, [448, 448], [2.0364201068878174, 2.0364201068878174], [400.0, 400.0], 7),
            "3d_lowres": (2, [128, 128, 128], [5.58088371512849, 3.7883412705634814, 3.7883412705634814],
                          [175, 215, 215], 6),
            "3d_fullres": (2, [128, 128, 128], [3.0, 2.0364201068878174, 2.0364201068878174], [326.0, 400.0, 400.0],
                           6),
        }),
    "kidney": dict(
        spacing=[0.9130857586860657, 0.78515625, 0.81640625], shapes=[[434, 512, 467], [435, 512, 467]], n=100,
        channels={"0": "CT"}, num_labels=3,
        expected={
            "2d": (12, [512, 512], [0.78515625, 0.81640625], [512.0, 467.0], 8),
            "3d_lowres": (2, [128, 128, 128], [2.1517464029479867, 1.8502721355776768, 1.923914807640471],
                          [184, 217, 198], 6),
            # the published 3d_fullres batch size was edited by hand (12); nnU-Net plans 2
            "3d_fullres": (2, [128, 128, 128], [0.9130857586860657, 0.78515625, 0.81640625], [434.5, 512.0, 467.0],
                           6),
        }),
}


@pytest.mark.parametrize("case", sorted(PUBLISHED))
def test_published_large_dataset_plans(case: str) -> None:
    c = PUBLISHED[case]
    n = c["n"]
    fingerprint = {"spacings": [c["spacing"]] * n, "shapes_after_crop": (c["shapes"] * n)[:n],
                   "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {k: {} for k in c["channels"]}}
    dataset_json = {"channel_names": c["channels"], "labels": {str(i): i for i in range(c["num_labels"])},
                    "numTraining": n, "file_ending": ".nii.gz"}
    plans = plan_experiment(fingerprint, dataset_json, dataset_name="Dataset999_X", image_reader_writer="SimpleITKIO")
    assert plans.available_configurations == ["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"]
    for name, (bs, patch, spacing, median, n_stages) in c["expected"].items():
        cfg = plans.configurations[name]
        assert (cfg["batch_size"], cfg["patch_size"], cfg["spacing"], cfg["median_image_size_in_voxels"],
                cfg["architecture"]["arch_kwargs"]["n_stages"]) == (bs, patch, spacing, median, n_stages), name
