"""DatasetSpec (dataset.json) and case discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnseg.raw.dataset_json import DatasetSpec, dataset_json_problems, load_dataset_json, save_dataset_json
from nnseg.raw.discover import CaseFiles, image_cases, training_cases


def _valid(**changes: object) -> dict[str, object]:
    d: dict[str, object] = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
                            "numTraining": 3, "file_ending": ".nii.gz"}
    d.update(changes)
    return d


@pytest.mark.parametrize("name", ["Dataset004_Hippocampus", "Dataset120_ISBI2012", "Dataset901_SynthAniso"])
def test_real_dataset_json_round_trips_exactly(expected_dir: Path, tmp_path: Path, name: str) -> None:
    src = expected_dir / name / "dataset.json"
    original = json.loads(src.read_text())
    spec = load_dataset_json(src)
    assert spec.to_json() == original
    assert list(spec.to_json()) == list(original)
    save_dataset_json(spec, tmp_path / "dataset.json")
    assert json.loads((tmp_path / "dataset.json").read_text()) == original
    if name == "Dataset004_Hippocampus":  # written by nnU-Net with indent 4: byte-identical
        assert (tmp_path / "dataset.json").read_bytes() == src.read_bytes()


def test_hippocampus_attributes(expected_dir: Path) -> None:
    spec = load_dataset_json(expected_dir / "Dataset004_Hippocampus" / "dataset.json")
    assert spec.num_channels == 1 and spec.channel_names == {"0": "MRI"}
    assert spec.num_training == 200 and spec.file_ending == ".nii.gz"
    assert spec.all_labels == [0, 1, 2] and spec.foreground_labels_or_regions == [1, 2]
    assert not spec.has_regions and spec.ignore_label is None
    assert spec.extra["numTest"] == 1


def test_regions_and_ignore_helpers() -> None:
    d = _valid(labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3, "ignore": 4},
               regions_class_order=[1, 2, 3])
    spec = DatasetSpec.from_json(d)
    assert spec.has_regions
    assert spec.foreground_labels_or_regions == [(1, 2, 3), (2, 3), 3]
    assert spec.all_labels == [0, 1, 2, 3]
    assert spec.ignore_label == 4 and spec.allowed_label_values == [0, 1, 2, 3, 4]
    assert spec.to_json() == d


def test_unknown_keys_are_kept_in_order_and_new_keys_appended() -> None:
    d = {"name": "x", "channel_names": {"0": "T1"}, "custom": [1, 2], "labels": {"background": 0, "a": 1},
         "numTraining": 1, "file_ending": ".png", "zzz": {"k": None}}
    spec = DatasetSpec.from_json(d)
    assert list(spec.to_json()) == list(d)
    spec.overwrite_image_reader_writer = "NaturalImage2DIO"
    assert list(spec.to_json())[-1] == "overwrite_image_reader_writer"


def test_legacy_modality_warns_and_maps_to_channel_names() -> None:
    d = {"name": "old", "modality": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "a": 1},
         "numTraining": 2, "file_ending": ".nii.gz"}
    with pytest.warns(UserWarning, match="modality"):
        spec = DatasetSpec.from_json(d)
    assert spec.channel_names == {"0": "CT", "1": "PET"} and spec.num_channels == 2
    assert list(spec.to_json()) == ["name", "channel_names", "labels", "numTraining", "file_ending"]


@pytest.mark.parametrize("changes, match", [
    ({"labels": {"background": 1, "a": 0}}, "background must be 0"),
    ({"labels": {"bg": 0, "a": 1}}, "no 'background'"),
    ({"labels": {"background": 0, "a": 1, "b": 3}}, "not consecutive"),
    ({"labels": {"background": 0, "a": 1, "ignore": 5}}, "ignore label must be the highest"),
    ({"labels": {"background": 0, "a": 1, "ignore": 1}}, "ignore"),
    ({"labels": {"background": 0, "a": [1, 2], "b": 2}}, "regions_class_order"),
    ({"labels": {"background": 0, "a": [1, 2], "b": 2}, "regions_class_order": [1]}, "2 ints"),
    ({"labels": {"background": 0, "a": "one"}}, "label 'a'"),
    ({"file_ending": "nii.gz"}, "start with a dot"),
    ({"numTraining": "3"}, "numTraining"),
    ({"channel_names": {"1": "CT"}}, "channel_names"),
])
def test_invalid_dataset_json_is_refused_with_the_fix(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DatasetSpec.from_json(_valid(**changes))


def test_missing_keys_are_all_named(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    with pytest.raises(ValueError, match=r"\['channel_names', 'numTraining', 'file_ending'\]") as e:
        load_dataset_json(tmp_path)
    assert str(tmp_path / "dataset.json") in str(e.value)
    assert dataset_json_problems(_valid()) == []


def test_load_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="needs a dataset.json"):
        load_dataset_json(tmp_path / "dataset.json")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_training_cases_follow_the_file_convention(tmp_path: Path) -> None:
    for name in ["b_2_0001.nii.gz", "b_2_0000.nii.gz", "a_0000.nii.gz", ".a_0000.nii.gz", "notes.txt"]:
        _touch(tmp_path / "imagesTr" / name)
    spec = DatasetSpec.from_json(_valid(channel_names={"0": "a", "1": "b"}))
    cases = training_cases(tmp_path, spec)
    assert [c.identifier for c in cases] == ["a", "b_2"]
    assert cases[1] == CaseFiles("b_2", (tmp_path / "imagesTr/b_2_0000.nii.gz", tmp_path / "imagesTr/b_2_0001.nii.gz"),
                                 tmp_path / "labelsTr/b_2.nii.gz")


def test_training_cases_from_the_dataset_key_expand_variables(tmp_path: Path) -> None:
    d = _valid(dataset={"z": {"images": ["$DATA/z_img.nii.gz"], "label": "lab/z.nii.gz"},
                        "c": {"images": ["/abs/c.nii.gz"], "label": "${DATA}/c_seg.nii.gz"}})
    cases = training_cases(tmp_path, DatasetSpec.from_json(d), env={"DATA": "/mnt/data"})
    assert cases == [CaseFiles("c", (Path("/abs/c.nii.gz"),), Path("/mnt/data/c_seg.nii.gz")),
                     CaseFiles("z", (Path("/mnt/data/z_img.nii.gz"),), tmp_path / "lab/z.nii.gz")]


def test_image_cases_for_prediction(tmp_path: Path) -> None:
    for name in ["p1_0000.png", "p1_0001.png", "p0_0000.png", "p0_0001.png"]:
        _touch(tmp_path / name)
    cases = image_cases(tmp_path, ".png", 2)
    assert [c.identifier for c in cases] == ["p0", "p1"] and cases[0].label is None
    assert cases[0].images == (tmp_path / "p0_0000.png", tmp_path / "p0_0001.png")
    with pytest.raises(ValueError, match=r"missing \[\].*unexpected \['p0_0001.png'\]"):
        image_cases(tmp_path, ".png", 1)
    (tmp_path / "p0_0001.png").unlink()
    with pytest.raises(ValueError, match=r"missing \['p0_0001.png'\]"):
        image_cases(tmp_path, ".png", 2)
    _touch(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="loose.png have no channel suffix"):
        image_cases(tmp_path, ".png", 2)
    with pytest.raises(FileNotFoundError):
        image_cases(tmp_path / "nope", ".png", 1)
    with pytest.raises(ValueError, match="no CASE_XXXX.nii.gz"):
        image_cases(tmp_path, ".nii.gz", 1)
