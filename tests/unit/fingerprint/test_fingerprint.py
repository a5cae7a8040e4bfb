"""Fingerprint: weighted-sample statistics equal numpy's on the expanded sample; per-case stats; JSON; extraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnseg.fingerprint.case_stats import (WeightedSample, case_stats, intensity_statistics, sample_foreground,
                                          samples_per_case, weighted_percentile)
from nnseg.fingerprint.fingerprint import (Fingerprint, extract_fingerprint, load_fingerprint, save_fingerprint)
from nnseg.raw.demo_data import make_demo_dataset


def _expanded(sample: WeightedSample) -> np.ndarray:
    return np.repeat(sample.values, sample.counts)


@pytest.mark.parametrize("q", [0.0, 0.5, 13.7, 50.0, 99.5, 100.0])
def test_weighted_percentile_equals_numpy_on_expanded_sample(rng: np.random.Generator, q: float) -> None:
    values = rng.normal(size=300).round(1)
    sample = WeightedSample.from_weighted(values, rng.integers(0, 5, size=300))
    assert weighted_percentile(sample, q) == pytest.approx(np.percentile(_expanded(sample), q), rel=1e-12, abs=1e-12)


def test_intensity_statistics_equal_numpy(rng: np.random.Generator) -> None:
    sample = WeightedSample.from_weighted(rng.gamma(2.0, 50.0, size=1000), rng.integers(1, 9, size=1000))
    x = _expanded(sample)
    stats = intensity_statistics(sample)
    assert list(stats) == sorted(stats)
    expected = {"max": x.max(), "mean": x.mean(), "median": np.median(x), "min": x.min(), "std": x.std(),
                "percentile_00_5": np.percentile(x, 0.5), "percentile_99_5": np.percentile(x, 99.5)}
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-9), key


def test_pool_merges_equal_values() -> None:
    a = WeightedSample.from_weighted(np.array([1.0, 2.0]), np.array([3, 1]))
    b = WeightedSample.from_weighted(np.array([2.0, 5.0, 7.0]), np.array([2, 0, 1]))
    pooled = WeightedSample.pool([a, b])
    assert pooled.values.tolist() == [1.0, 2.0, 7.0] and pooled.counts.tolist() == [3, 3, 1]


def test_empty_foreground_gives_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no foreground voxels"):
        intensity_statistics(WeightedSample.empty())


def test_sample_foreground_draws_exactly_n_from_the_foreground(rng: np.random.Generator) -> None:
    image = rng.normal(size=(6, 7, 8)).astype(np.float32)
    mask = image > 0.5
    sample = sample_foreground(image, mask, 12345, np.random.RandomState(1234))
    assert sample.size == 12345
    assert set(sample.values.tolist()) <= set(image[mask].astype(np.float64).tolist())
    assert sample_foreground(image, np.zeros_like(mask), 10, np.random.RandomState(0)).size == 0


def test_samples_per_case_is_nnunets_rule() -> None:
    assert samples_per_case(200) == 500000 and samples_per_case(3) == 33333333
    with pytest.raises(ValueError, match="no training cases"):
        samples_per_case(0)


def test_case_stats_crops_and_measures() -> None:
    images = np.zeros((2, 10, 12, 14), dtype=np.float32)
    images[:, 2:8, 3:9, 4:10] = 5.0
    images[1, 2:8, 3:9, 4:10] = 7.0
    seg = np.zeros((1, 10, 12, 14), dtype=np.float32)
    seg[0, 3:5, 4:6, 5:7] = 1
    stats = case_stats(images, seg, (2.0, 1.0, 0.5), num_samples=100)
    assert stats.shape_after_crop == [6, 6, 6]
    assert stats.relative_size_after_cropping == pytest.approx(216 / (10 * 12 * 14))
    assert stats.spacing == [2.0, 1.0, 0.5]
    assert [s.values.tolist() for s in stats.foreground] == [[5.0], [7.0]]
    assert [s.size for s in stats.foreground] == [100, 100]


def test_fingerprint_json_has_nnunets_four_keys_sorted(tmp_path: Path) -> None:
    fp = Fingerprint({"0": {"max": 2.0, "mean": 1.0, "median": 1.0, "min": 0.0, "percentile_00_5": 0.0,
                            "percentile_99_5": 2.0, "std": 0.5}}, 0.9, [[3, 4, 5]], [[1.0, 1.0, 2.5]])
    save_fingerprint(fp, tmp_path / "dataset_fingerprint.json")
    text = (tmp_path / "dataset_fingerprint.json").read_text()
    assert text == json.dumps(fp.to_json(), sort_keys=True, indent=4)
    assert list(json.loads(text)) == ["foreground_intensity_properties_per_channel", "median_relative_size_after_cropping",
                                      "shapes_after_crop", "spacings"]
    assert load_fingerprint(tmp_path / "dataset_fingerprint.json") == fp


def test_missing_fingerprint_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nnseg fingerprint"):
        load_fingerprint(tmp_path / "Dataset001_X" / "dataset_fingerprint.json")
    with pytest.raises(ValueError, match="lacks"):
        Fingerprint.from_json({"spacings": []})


def test_extract_fingerprint_on_a_demo_dataset(tmp_path: Path) -> None:
    raw = make_demo_dataset(tmp_path / "Dataset001_Demo", num_cases=3, num_channels=2, shape=(12, 16, 16), num_test=0)
    fp = extract_fingerprint(raw, num_processes=1)
    assert len(fp.spacings) == 3 and all(s == [1.0, 1.0, 1.0] for s in fp.spacings)
    assert list(fp.foreground_intensity_properties_per_channel) == ["0", "1"]
    for props in fp.foreground_intensity_properties_per_channel.values():
        assert props["min"] <= props["percentile_00_5"] <= props["median"] <= props["percentile_99_5"] <= props["max"]
    assert 0 < fp.median_relative_size_after_cropping <= 1


def test_extract_fingerprint_names_a_broken_case(tmp_path: Path) -> None:
    raw = make_demo_dataset(tmp_path / "Dataset001_Demo", num_cases=2, shape=(8, 8, 8), num_test=0)
    (raw / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="case_001"):
        extract_fingerprint(raw, num_processes=1)


@pytest.mark.slow
def test_pool_map_returns_every_result_and_reports_a_dead_worker() -> None:
    import os

    from nnseg.fingerprint.pool import pool_map

    assert sorted(pool_map(abs, [-3, -1, -2], num_workers=2, limit=lambda job: 1)) == [(0, 3), (1, 1), (2, 2)]
    with pytest.raises(RuntimeError, match="worker process died.*case 7.*-np"):
        list(pool_map(os._exit, [7, 7], num_workers=2, describe=lambda job: f"case {job}"))
