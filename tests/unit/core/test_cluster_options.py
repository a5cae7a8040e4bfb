"""The Dask backend's pure parts: --cluster values, memory estimates and how they are fitted to the workers, and the
error without Dask. The cluster itself is tested for real in tests/e2e/test_cluster_dask.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.cluster.connect import parse_cluster, require_dask
from nnseg.cluster.memory import fit_to_workers, predict_bytes, preprocess_bytes, resampling_factor


def test_parse_cluster(tmp_path: Path) -> None:
    assert parse_cluster("local") == ("local", None) and parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://127.0.0.1:8786") == ("address", "tcp://127.0.0.1:8786")
    (tmp_path / "s.json").write_text("{}")
    assert parse_cluster(str(tmp_path / "s.json")) == ("file", str(tmp_path / "s.json"))
    for bad in ("local:0", "local:x", "myhost:8786", str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match="--cluster"):
            parse_cluster(bad)


def _image(path: Path, shape: tuple[int, int, int], spacing: float) -> Path:
    img = sitk.GetImageFromArray(np.zeros(shape, np.float32))
    img.SetSpacing((spacing,) * 3)
    sitk.WriteImage(img, str(path))
    return path


def test_memory_estimates_grow_with_the_case_and_fit_the_workers(tmp_path: Path) -> None:
    small = _image(tmp_path / "small.nii.gz", (36, 50, 35), 1.0)
    big = _image(tmp_path / "big.nii.gz", (128, 128, 128), 1.0)
    assert preprocess_bytes([big]) > 8 * preprocess_bytes([small]) - 8 * 200 * 2**20
    assert preprocess_bytes([big], [(0.5, 0.5, 0.5)]) > preprocess_bytes([big])  # upsampling to a finer spacing
    assert preprocess_bytes([big, big]) > preprocess_bytes([big])  # channels
    assert predict_bytes([big], target_spacing=(1, 1, 1), num_classes=3) > \
        predict_bytes([small], target_spacing=(1, 1, 1), num_classes=3)
    assert resampling_factor((1, 1, 3), (1, 1, 1)) == pytest.approx(3.0)
    assert fit_to_workers(10**9, {"a": 4e9, "b": 2e9}) == 10**9
    assert fit_to_workers(10**11, {"a": 4e9, "b": 2e9}) == 4 * 10**9  # runs alone on the largest worker
    assert fit_to_workers(10**9, {"a": 4e9, "b": None}) is None  # a worker without MEMORY: no memory resource


def test_missing_dask_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(RuntimeError, match=r"pip install nnseg\[dask\]"):
        require_dask()


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii", "a.nrrd"])
@pytest.mark.parametrize("shape_zyx", [(7, 5, 3), (1, 6, 4)])
def test_header_shape_and_spacing_equal_simpleitks(tmp_path: Path, name: str, shape_zyx: tuple[int, ...]) -> None:
    """The NIfTI fast path (and the SimpleITK path for other formats) reads what SimpleITK reads."""
    from nnseg.cluster.memory import image_header

    image = sitk.GetImageFromArray(np.zeros(shape_zyx, dtype=np.int16))
    image.SetSpacing((0.7, 1.25, 3.0))
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    shape, spacing = image_header(path)
    assert shape == reader.GetSize() and spacing == pytest.approx(reader.GetSpacing())


def test_a_damaged_nifti_header_falls_back_to_the_file_size(tmp_path: Path) -> None:
    from nnseg.cluster.memory import image_header

    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a nifti file")
    assert image_header(path) is None
    assert preprocess_bytes([path]) > 0
