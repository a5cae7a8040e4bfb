"""Dataset preprocessing: outputs, resume after an interruption, --clean, and errors that name the broken case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.fingerprint.fingerprint import extract_fingerprint
from nnseg.plans.planner import plan_experiment
from nnseg.plans.schema import Plans
from nnseg.preprocessed import store
from nnseg.preprocessed.run import SETTINGS_FILE, _resolve_num_processes, default_num_processes, preprocess_dataset
from nnseg.raw.demo_data import make_demo_dataset


def _dataset(tmp_path: Path, num_cases: int = 3) -> tuple[Path, Plans]:
    raw = make_demo_dataset(tmp_path / "raw" / "Dataset001_Demo", num_cases=num_cases, shape=(12, 20, 20), num_test=0)
    fp = extract_fingerprint(raw, num_processes=1)
    plans = plan_experiment(fp, {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                                 "numTraining": num_cases, "file_ending": ".nii.gz"},
                            dataset_name="Dataset001_Demo", image_reader_writer="SimpleITKIO")
    return raw, plans


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != SETTINGS_FILE)


def test_outputs(tmp_path: Path) -> None:
    raw, plans = _dataset(tmp_path)
    (raw / "splits_final.json").write_text('[{"train": ["case_000"], "val": ["case_001"]}]')
    out = tmp_path / "pre"
    summary = preprocess_dataset(raw, out, plans, ["3d_fullres"], num_processes=1)
    folder = out / plans.configuration("3d_fullres").data_identifier
    assert summary["3d_fullres"].processed == ["case_000", "case_001", "case_002"]
    assert _files(folder) == sorted(f"case_00{i}{e}" for i in range(3) for e in (".b2nd", ".json", "_seg.b2nd"))
    assert _files(out / "gt_segmentations") == [f"case_00{i}.nii.gz" for i in range(3)]
    assert (out / "gt_segmentations" / "case_001.nii.gz").read_bytes() == (raw / "labelsTr" / "case_001.nii.gz").read_bytes()
    assert (out / "dataset.json").read_text() == (raw / "dataset.json").read_text()
    assert (out / "splits_final.json").is_file()
    data, seg, props = store.load_case(folder, "case_002")
    assert data.shape[1:] == seg.shape[1:] and "class_locations" in props and "shape_before_cropping" in props


def test_resume_after_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, plans = _dataset(tmp_path)
    out = tmp_path / "pre"
    folder = out / plans.configuration("3d_fullres").data_identifier
    real, writes = store._write_b2nd_to, []

    def killed_during_second_case(array: np.ndarray, path: Path, **kwargs: object) -> None:
        writes.append(path)
        if len(writes) == 4:  # case_001's seg
            raise KeyboardInterrupt
        real(array, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write_b2nd_to", killed_during_second_case)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(raw, out, plans, ["3d_fullres"], num_processes=1)
    monkeypatch.setattr(store, "_write_b2nd_to", real)
    assert _files(folder) == ["case_000.b2nd", "case_000.json", "case_000_seg.b2nd"]  # nothing of case_001
    # what a SIGKILL between writes could leave: a stale temporary file and an array without its properties
    (folder / ".case_001.b2nd.abc.tmp.b2nd").write_bytes(b"partial")
    (folder / "case_002.b2nd").write_bytes(b"renamed, but killed before the json")
    done_before = (folder / "case_000.b2nd").stat().st_mtime_ns
    summary = preprocess_dataset(raw, out, plans, ["3d_fullres"], num_processes=1)
    assert summary["3d_fullres"].skipped == ["case_000"]
    assert summary["3d_fullres"].processed == ["case_001", "case_002"]
    assert (folder / "case_000.b2nd").stat().st_mtime_ns == done_before
    assert len(_files(folder)) == 9 and all(store.case_is_complete(folder, f"case_00{i}") for i in range(3))
    store.load_case(folder, "case_002")[0][...]  # readable, i.e. rewritten
    summary = preprocess_dataset(raw, out, plans, ["3d_fullres"], num_processes=1, clean=True)
    assert summary["3d_fullres"].processed == ["case_000", "case_001", "case_002"]


def test_corrupt_image_stops_with_the_case_and_leaves_no_partial_case(tmp_path: Path) -> None:
    raw, plans = _dataset(tmp_path)
    bad = raw / "imagesTr" / "case_001_0000.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "pre"
    with pytest.raises(ValueError, match="case_001") as info:
        preprocess_dataset(raw, out, plans, ["3d_fullres"], num_processes=1)
    assert str(bad) in str(info.value)
    folder = out / plans.configuration("3d_fullres").data_identifier
    assert not any(p.name.startswith("case_001") for p in folder.iterdir())
    assert not any(p.name.startswith(".") for p in folder.iterdir())


def test_changed_plans_redo_the_cases_and_shared_folders_are_done_once(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    raw, plans = _dataset(tmp_path, num_cases=2)
    out = tmp_path / "pre"
    preprocess_dataset(raw, out, plans, ["3d_fullres"], num_processes=1)
    d = plans.to_json()
    d["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    summary = preprocess_dataset(raw, out, Plans.from_json(d), ["3d_fullres", "3d_fullres_bs4"], num_processes=1)
    assert list(summary) == ["3d_fullres"] and summary["3d_fullres"].skipped == ["case_000", "case_001"]
    assert "preprocessed once" in capsys.readouterr().out
    d["configurations"]["3d_fullres"]["normalization_schemes"] = ["NoNormalization"]
    summary = preprocess_dataset(raw, out, Plans.from_json(d), ["3d_fullres"], num_processes=1)
    assert summary["3d_fullres"].processed == ["case_000", "case_001"]
    assert "preprocessing it again" in capsys.readouterr().out


def test_label_image_size_mismatch_names_the_case(tmp_path: Path) -> None:
    raw, plans = _dataset(tmp_path, num_cases=2)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 7), np.uint8)), str(raw / "labelsTr" / "case_000.nii.gz"))
    with pytest.raises(ValueError, match="case_000.*differ|differ.*case_000"):
        preprocess_dataset(raw, tmp_path / "pre", plans, ["3d_fullres"], num_processes=1)


def test_unknown_configuration_lists_the_available(tmp_path: Path) -> None:
    raw, plans = _dataset(tmp_path, num_cases=2)
    with pytest.raises(ValueError, match="available"):
        preprocess_dataset(raw, tmp_path / "pre", plans, ["3d_nope"], num_processes=1)


def test_num_processes_rules() -> None:
    assert default_num_processes("2d", cpu_count=64) == 8 and default_num_processes("3d_fullres", cpu_count=64) == 4
    assert default_num_processes("3d_lowres", cpu_count=2) == 2 and default_num_processes("other", cpu_count=64) == 4
    assert _resolve_num_processes(["2d", "3d_fullres"], [3]) == {"2d": 3, "3d_fullres": 3}
    assert _resolve_num_processes(["2d", "3d_fullres"], [3, 1]) == {"2d": 3, "3d_fullres": 1}
    with pytest.raises(ValueError, match="one per configuration"):
        _resolve_num_processes(["2d", "3d_fullres"], [1, 2, 3])
