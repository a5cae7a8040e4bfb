"""Fingerprints of the three shared datasets against nnU-Net v2's ``dataset_fingerprint.json``.

Spacings, shapes after crop and the median relative size must be identical; the foreground intensity statistics come
from a random sample, so they must agree within 1% of the channel's std (nnU-Net's own run-to-run noise is smaller).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nnseg.fingerprint.fingerprint import extract_fingerprint
from nnseg.jsonio import load_json

pytestmark = pytest.mark.golden


def _hippocampus_raw(data: Path, expected: Path, tmp_path: Path) -> Path:
    """A v2 raw folder of links to the MSD files (``_0000`` added), with nnU-Net's converted dataset.json."""
    task = data / "Task04_Hippocampus"
    raw = tmp_path / "Dataset004_Hippocampus"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for image in sorted((task / "imagesTr").glob("*.nii.gz")):
        if not image.name.startswith((".", "_")):
            (raw / "imagesTr" / image.name.replace(".nii.gz", "_0000.nii.gz")).symlink_to(image)
    for label in sorted((task / "labelsTr").glob("*.nii.gz")):
        if not label.name.startswith((".", "_")):
            (raw / "labelsTr" / label.name).symlink_to(label)
    (raw / "dataset.json").write_text((expected / "Dataset004_Hippocampus" / "dataset.json").read_text())
    return raw


def _compare(got: dict, want: dict) -> None:
    assert got["spacings"] == want["spacings"]
    assert got["shapes_after_crop"] == want["shapes_after_crop"]
    assert got["median_relative_size_after_cropping"] == want["median_relative_size_after_cropping"]
    want_props = want["foreground_intensity_properties_per_channel"]
    got_props = got["foreground_intensity_properties_per_channel"]
    assert list(got_props) == list(want_props)
    for channel, props in want_props.items():
        assert list(got_props[channel]) == list(props)
        for key, value in props.items():
            assert abs(got_props[channel][key] - value) <= 0.01 * props["std"], (channel, key, got_props[channel][key], value)


@pytest.mark.slow
def test_hippocampus_fingerprint(shared_data: Path, expected_dir: Path, tmp_path: Path) -> None:
    raw = _hippocampus_raw(shared_data, expected_dir, tmp_path)
    fp = extract_fingerprint(raw, num_processes=2)
    _compare(fp.to_json(), load_json(expected_dir / "Dataset004_Hippocampus" / "dataset_fingerprint.json"))


@pytest.mark.parametrize("folder, name", [("ISBI2012_EM_2D", "Dataset120_ISBI2012"),
                                          ("Dataset901_SynthAniso", "Dataset901_SynthAniso")])
def test_fingerprint(shared_data: Path, expected_dir: Path, folder: str, name: str) -> None:
    fp = extract_fingerprint(shared_data / folder, num_processes=1)
    _compare(fp.to_json(), load_json(expected_dir / name / "dataset_fingerprint.json"))
