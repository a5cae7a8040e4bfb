"""Surface metrics: values on shapes with known distances, spacing, empty-mask conventions, brute-force oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nnseg.metrics.surface import (
    SurfaceOptions,
    hd95,
    normalized_surface_dice,
    surface_distances,
    surface_metrics,
    surface_voxels,
)


def _cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_identical_masks():
    a = _cube((10, 10, 10), (2, 2, 2), (7, 7, 7))
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert normalized_surface_dice(a, a, (1, 1, 1), tolerance_mm=0.0) == 1.0


def test_shifted_cube_distance_scales_with_spacing():
    a = _cube((12, 12, 12), (2, 2, 2), (7, 7, 7))
    b = _cube((12, 12, 12), (4, 2, 2), (9, 7, 7))  # shifted by 2 voxels along axis 0
    assert hd95(a, b, (1, 1, 1)) == pytest.approx(2.0)
    assert hd95(a, b, (3, 1, 1)) == pytest.approx(6.0)
    assert hd95(a, b, (1, 5, 5)) == pytest.approx(2.0)
    assert normalized_surface_dice(a, b, (1, 1, 1), tolerance_mm=2.0) == 1.0
    assert 0 < normalized_surface_dice(a, b, (1, 1, 1), tolerance_mm=1.0) < 1


def test_against_brute_force(rng):
    a = rng.random((9, 8, 7)) > 0.6
    b = rng.random((9, 8, 7)) > 0.6
    spacing = (1.5, 0.7, 2.0)
    d_ab, d_ba = surface_distances(a, b, spacing)
    pa = np.argwhere(surface_voxels(a)) * spacing
    pb = np.argwhere(surface_voxels(b)) * spacing
    dist = cdist(pa, pb)
    np.testing.assert_allclose(np.sort(d_ab), np.sort(dist.min(axis=1)))
    np.testing.assert_allclose(np.sort(d_ba), np.sort(dist.min(axis=0)))
    expected_hd = max(np.percentile(dist.min(axis=1), 95), np.percentile(dist.min(axis=0), 95))
    assert hd95(a, b, spacing) == pytest.approx(expected_hd)
    tol = 1.0
    expected_nsd = ((dist.min(axis=1) <= tol).sum() + (dist.min(axis=0) <= tol).sum()) / (len(pa) + len(pb))
    assert normalized_surface_dice(a, b, spacing, tolerance_mm=tol) == pytest.approx(expected_nsd)


def test_surface_of_a_cube_and_border_voxels():
    a = _cube((5, 5, 5), (1, 1, 1), (4, 4, 4))
    s = surface_voxels(a)
    assert s.sum() == 27 - 1  # all but the centre voxel
    full = np.ones((3, 3, 3), bool)
    assert surface_voxels(full).sum() == 26  # the image border counts as outside


def test_empty_mask_conventions():
    e = np.zeros((4, 4, 4), bool)
    a = _cube((4, 4, 4), (1, 1, 1), (3, 3, 3))
    assert math.isnan(hd95(e, e, (1, 1, 1)))
    assert math.isnan(normalized_surface_dice(e, e, (1, 1, 1), tolerance_mm=1))
    assert hd95(a, e, (1, 1, 1)) == math.inf and hd95(e, a, (1, 1, 1)) == math.inf
    assert normalized_surface_dice(a, e, (1, 1, 1), tolerance_mm=1) == 0.0
    out = surface_metrics(e, a, (1, 1, 1), SurfaceOptions(nsd_tolerances_mm=(1.0,)))
    assert out == {"HD95": math.inf, "NSD@1.0mm": 0.0}
    both = surface_metrics(e, e, (1, 1, 1), SurfaceOptions(nsd_tolerances_mm=(0.5,), hd95=False))
    assert list(both) == ["NSD@0.5mm"] and math.isnan(both["NSD@0.5mm"])


def test_2d_image_stored_with_a_singleton_axis():
    a2 = _cube((10, 10), (2, 2), (6, 6))
    b2 = _cube((10, 10), (2, 3), (6, 7))
    d2 = hd95(a2, b2, (1.0, 1.0))
    d3 = hd95(a2[None], b2[None], (999.0, 1.0, 1.0))  # a (1, X, Y) label map: the singleton axis is dropped
    assert d2 == d3 == pytest.approx(1.0)


def test_surface_metrics_matches_single_functions(rng):
    a = rng.random((8, 8, 8)) > 0.5
    b = rng.random((8, 8, 8)) > 0.5
    out = surface_metrics(a, b, (1, 2, 1), SurfaceOptions(nsd_tolerances_mm=(1.0, 2.5)))
    assert out["HD95"] == hd95(a, b, (1, 2, 1))
    assert out["NSD@2.5mm"] == normalized_surface_dice(a, b, (1, 2, 1), tolerance_mm=2.5)


def test_bad_input():
    a = np.ones((3, 3), bool)
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(a, a, (1, 1), tolerance_mm=-1)
