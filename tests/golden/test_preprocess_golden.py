"""Preprocessing against nnU-Net v2's own preprocessed cases (``expected/*/preprocessed_<cfg>/<case>.npz/.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnseg.plans.schema import load_plans
from nnseg.preprocessed.preprocess import preprocess_case, preprocess_files
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.raw.image_io import read_images, read_seg

pytestmark = pytest.mark.golden

HIPPO = "Task04_Hippocampus"
ANISO = "Dataset901_SynthAniso"


def _files(data: Path, dataset: str, case: str) -> tuple[list[Path], Path]:
    if dataset == "Dataset004_Hippocampus":
        return [data / HIPPO / "imagesTr" / f"{case}.nii.gz"], data / HIPPO / "labelsTr" / f"{case}.nii.gz"
    if dataset == "Dataset901_SynthAniso":
        root = data / ANISO
        return [root / "imagesTr" / f"{case}_000{c}.nii.gz" for c in range(2)], root / "labelsTr" / f"{case}.nii.gz"
    root = data / "ISBI2012_EM_2D"
    return [root / "imagesTr" / f"{case}_0000.png"], root / "labelsTr" / f"{case}.png"


CASES = [
    ("Dataset004_Hippocampus", "2d", "hippocampus_001"),
    ("Dataset004_Hippocampus", "2d", "hippocampus_017"),
    ("Dataset004_Hippocampus", "3d_fullres", "hippocampus_001"),
    ("Dataset004_Hippocampus", "3d_fullres", "hippocampus_017"),
    ("Dataset901_SynthAniso", "2d", "syn_000"),
    ("Dataset901_SynthAniso", "3d_fullres", "syn_000"),
    ("Dataset120_ISBI2012", "2d", "em_00"),
]

GEOMETRY_KEYS = ("spacing", "shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling")


@pytest.mark.parametrize(("dataset", "configuration", "case"), CASES)
def test_preprocess_matches_nnunet(shared_data: Path, expected_dir: Path, dataset: str, configuration: str, case: str) -> None:
    plans = load_plans(expected_dir / dataset / "nnUNetPlans.json")
    spec = DatasetSpec.from_json(json.loads((expected_dir / dataset / "dataset.json").read_text()))
    images, label = _files(shared_data, dataset, case)
    data, seg, props = preprocess_files(images, label, io=plans.image_reader_writer, plans=plans,
                                        configuration=plans.configuration(configuration), spec=spec)
    gold = np.load(expected_dir / dataset / f"preprocessed_{configuration}" / f"{case}.npz")
    gold_props = json.loads((expected_dir / dataset / f"preprocessed_{configuration}" / f"{case}.json").read_text())

    assert data.dtype == np.float32 and data.shape == gold["data"].shape
    assert np.abs(data - gold["data"]).max() < 1e-3
    assert seg is not None and seg.dtype in (np.int8, np.int16) and seg.shape == gold["seg"].shape
    assert (seg == gold["seg"]).mean() >= 0.999
    for key in GEOMETRY_KEYS:
        assert [*np.asarray(props[key]).tolist()] == [*np.asarray(gold_props[key]).tolist()], key
    if "sitk_stuff" in gold_props:
        assert {k: list(v) for k, v in props["sitk_stuff"].items()} == gold_props["sitk_stuff"]

    ours, theirs = props["class_locations"], gold_props["class_locations"]
    assert set(ours) == set(theirs)
    for key, coords in ours.items():
        assert len(coords) == len(theirs[key]), key
        arr = np.asarray(coords)
        assert (seg[tuple(arr.T)] == int(key)).all(), key
        json.dumps(coords)  # JSON-ready
        if (seg == gold["seg"]).all():  # same seg, same seeded draws: nnU-Net's very coordinates
            assert {tuple(c) for c in coords} == {tuple(c) for c in theirs[key]}, key


def test_prediction_input_gives_same_data_and_keeps_inputs(shared_data: Path, expected_dir: Path) -> None:
    dataset = "Dataset901_SynthAniso"
    plans = load_plans(expected_dir / dataset / "nnUNetPlans.json")
    images, _ = _files(shared_data, dataset, "syn_000")
    raw, geometry = read_images(images, plans.image_reader_writer)
    before = raw.copy()
    data, seg, props = preprocess_case(raw, None, geometry.to_properties(), plans=plans,
                                       configuration=plans.configuration("3d_fullres"))
    gold = np.load(expected_dir / dataset / "preprocessed_3d_fullres" / "syn_000.npz")
    assert seg is None and "class_locations" not in props
    assert np.abs(data - gold["data"]).max() < 1e-3
    np.testing.assert_array_equal(raw, before)


def test_bad_inputs_are_reported(shared_data: Path, expected_dir: Path) -> None:
    dataset = "Dataset004_Hippocampus"
    plans = load_plans(expected_dir / dataset / "nnUNetPlans.json")
    images, label = _files(shared_data, dataset, "hippocampus_001")
    data, geometry = read_images(images, plans.image_reader_writer)
    seg, _ = read_seg(label, plans.image_reader_writer)
    cfg = plans.configuration("3d_fullres")
    with pytest.raises(ValueError, match="spec="):
        preprocess_case(data, seg, geometry.to_properties(), plans=plans, configuration=cfg)
    with pytest.raises(ValueError, match="differ"):
        preprocess_case(data, seg[:, :-1], geometry.to_properties(), plans=plans, configuration=cfg, spec=None)
    with pytest.raises(ValueError, match="channels"):
        preprocess_case(np.concatenate([data, data]), None, geometry.to_properties(), plans=plans, configuration=cfg)
