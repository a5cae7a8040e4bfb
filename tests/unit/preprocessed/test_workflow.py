"""The plan-and-preprocess workflow from Python (``nnseg.preprocessed.workflow``): the same files as the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnseg.jsonio import load_json
from nnseg.paths import resolve_roots
from nnseg.preprocessed.store import case_is_complete
from nnseg.preprocessed.workflow import (
    DatasetFolders,
    PlanAndPreprocessRequest,
    fingerprint_dataset,
    plan_and_preprocess,
    plan_dataset,
    preprocess_planned,
)
from nnseg.raw.demo_data import make_demo_dataset

CASES = [f"case_{i:03d}" for i in range(4)]


@pytest.fixture
def dataset(tmp_path: Path, roots_env: dict[str, str]) -> DatasetFolders:
    make_demo_dataset(Path(roots_env["nnUNet_raw"]) / "Dataset001_Demo", num_cases=4, shape=(16, 24, 24), num_test=0)
    return DatasetFolders.find(1, resolve_roots(roots_env, cwd=tmp_path))


def test_request_runs_the_three_steps(dataset: DatasetFolders) -> None:
    names = plan_and_preprocess(PlanAndPreprocessRequest(datasets=(dataset,), fingerprint_processes=1,
                                                         configurations=("3d_fullres",), num_processes=(1,),
                                                         progress=False))
    assert names == {"Dataset001_Demo": "nnUNetPlans"}
    plans = load_json(dataset.preprocessed / "nnUNetPlans.json")
    folder = dataset.preprocessed / plans["configurations"]["3d_fullres"]["data_identifier"]
    assert all(case_is_complete(folder, c) for c in CASES)
    assert (dataset.preprocessed / "dataset_fingerprint.json").is_file()


def test_steps_one_by_one_equal_the_request(dataset: DatasetFolders, tmp_path: Path) -> None:
    fingerprint = fingerprint_dataset(dataset, num_processes=1, progress=False)
    assert plan_dataset(dataset, overwrite_plans_name="MyPlans") == "MyPlans"
    preprocess_planned(dataset, plans_name="MyPlans", configurations=("2d",), num_processes=(1,), progress=False)
    plans = load_json(dataset.preprocessed / "MyPlans.json")
    assert fingerprint == dataset.preprocessed / "dataset_fingerprint.json"
    assert all(case_is_complete(dataset.preprocessed / plans["configurations"]["2d"]["data_identifier"], c)
               for c in CASES)


def test_bad_options_are_refused_before_anything_is_written(dataset: DatasetFolders) -> None:
    with pytest.raises(ValueError, match="unknown experiment planner -pl 'Nope'"):
        PlanAndPreprocessRequest(datasets=(dataset,), planner="Nope")
    with pytest.raises(ValueError, match="-np got 2 values"):
        PlanAndPreprocessRequest(datasets=(dataset,), configurations=("3d_fullres",), num_processes=(1, 2))
    with pytest.raises(FileNotFoundError, match="plan first"):
        preprocess_planned(dataset, configurations=("3d_fullres",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fingerprint_dataset(DatasetFolders("Dataset002_None", dataset.raw.parent / "Dataset002_None",
                                           dataset.preprocessed.parent / "Dataset002_None"))
    assert not dataset.preprocessed.exists()
