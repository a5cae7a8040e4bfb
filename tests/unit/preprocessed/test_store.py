"""Preprocessed store: round trip, patch-aware chunking, lazy partial reads, atomic writes, legacy nnU-Net files."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import blosc2
import numpy as np
import pytest

from nnseg.preprocessed import store
from nnseg.preprocessed.store import (BLOCK_MAX_BYTES, CHUNK_MAX_BYTES, case_is_complete, case_paths, chunks_and_blocks,
                                      list_cases, load_case, remove_temporary_files, save_case)


def _props() -> dict:
    return {"spacing": [3.0, 0.8, 0.8], "shape_before_cropping": [10, 20, 30],
            "bbox_used_for_cropping": [[0, 10], [1, 20], [2, 30]], "sitk_stuff": {"origin": (0.0, 0.0, 0.0)},
            "class_locations": {1: np.array([[0, 1, 2, 3], [0, 4, 5, 6]]), 2: np.zeros((0, 4), dtype=np.int64),
                                (1, 2): np.array([[0, 1, 2, 3]])}}


def test_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.normal(size=(2, 10, 19, 28)).astype(np.float32)
    seg = rng.integers(-1, 3, size=(1, 10, 19, 28)).astype(np.int16)
    save_case(tmp_path, "case_7", data, seg, _props(), patch_size=(8, 16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_7.b2nd", "case_7.json", "case_7_seg.b2nd"]
    lazy_data, lazy_seg, props = load_case(tmp_path, "case_7")
    assert isinstance(lazy_data, blosc2.NDArray) and lazy_seg.dtype == np.int16
    np.testing.assert_array_equal(lazy_data[...], data)
    np.testing.assert_array_equal(lazy_seg[...], seg)
    np.testing.assert_array_equal(lazy_data[1, 2:5, :, 3:9], data[1, 2:5, :, 3:9])
    assert props["bbox_used_for_cropping"] == [[0, 10], [1, 20], [2, 30]]
    assert set(props["class_locations"]) == {1, 2, (1, 2)}
    np.testing.assert_array_equal(props["class_locations"][1], [[0, 1, 2, 3], [0, 4, 5, 6]])
    assert props["class_locations"][2].shape == (0, 4)
    assert case_is_complete(tmp_path, "case_7") and list_cases(tmp_path) == ["case_7"]


def test_compression_settings_are_nnunets(tmp_path: Path) -> None:
    data = np.zeros((1, 40, 50, 60), dtype=np.float32)
    data[0, 10:30] = np.arange(50 * 60, dtype=np.float32).reshape(50, 60)
    save_case(tmp_path, "c", data, None, {"spacing": [1, 1, 1]}, patch_size=(32, 32, 32))
    cparams = blosc2.open(str(tmp_path / "c.b2nd")).schunk.cparams
    assert cparams.codec == blosc2.Codec.LZ4HC and cparams.clevel == 5
    assert cparams.filters[0] in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE)
    assert not (tmp_path / "c_seg.b2nd").exists() and case_is_complete(tmp_path, "c", with_seg=False)


@pytest.mark.parametrize("shape, patch, itemsize", [
    ((1, 40, 56, 40), (40, 56, 40), 4), ((2, 39, 105, 109), (20, 160, 160), 4), ((1, 1, 512, 512), (512, 512), 4),
    ((1, 300, 512, 512), (128, 128, 128), 4), ((1, 300, 512, 512), (128, 128, 128), 1), ((3, 7, 9, 11), None, 4), ((1, 90, 90, 90), (33, 41, 90), 4),
    ((1, 38, 52, 36), (56, 40), 4), ((2, 300, 512, 512), (512, 512), 4)])
def test_chunks_and_blocks_limits(shape: tuple, patch: tuple | None, itemsize: int) -> None:
    chunks, blocks = chunks_and_blocks(shape, patch, itemsize)
    slice_axes = len(shape) - 1 - len(patch) if patch else 0
    full_patch = [1] * slice_axes + list(patch) if patch else list(shape[1:])
    assert chunks[0] == 1 and blocks[0] == 1  # never across channels
    assert math.prod(blocks) * itemsize <= BLOCK_MAX_BYTES
    assert math.prod(chunks) * itemsize <= CHUNK_MAX_BYTES
    for axis, (c, b, s, p) in enumerate(zip(chunks[1:], blocks[1:], shape[1:], full_patch)):
        assert b <= c <= s
        assert c <= 1.5 * p or axis < slice_axes  # 2D patches: a chunk holds several slices, a block one


def test_2d_slices_share_chunks_and_a_slice_read_touches_one(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.normal(size=(1, 38, 52, 36)).astype(np.float32)  # a Hippocampus case as 2D data
    store.write_b2nd(data, tmp_path / "2d.b2nd", patch_size=(56, 40))
    array = store.open_b2nd(tmp_path / "2d.b2nd")
    assert array.schunk.nchunks == 1 and array.blocks == (1, 1, 52, 36)  # one chunk: ~4x cheaper to write than 38
    assert blosc2.get_slice_nchunks(array, (slice(0, 1), slice(17, 18))) == [0]
    np.testing.assert_array_equal(array[:, 17], data[:, 17])


def test_slice_read_decompresses_only_the_chunks_it_touches(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.normal(size=(1, 128, 128, 128)).astype(np.float32)  # 8 MiB
    store.write_b2nd(data, tmp_path / "big.b2nd", patch_size=(32, 32, 32))
    array = store.open_b2nd(tmp_path / "big.b2nd")
    key = (slice(0, 1), slice(40, 72), slice(0, 32), slice(90, 122))
    touched = blosc2.get_slice_nchunks(array, key)
    assert array.schunk.nchunks >= 32
    assert 1 <= len(touched) <= 8  # a patch overlaps at most 2 chunks per axis
    np.testing.assert_array_equal(array[key], data[key])


def test_failed_write_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store._write_b2nd_to
    calls = []

    def fail_on_seg(array: np.ndarray, path: Path, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(array, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write_b2nd_to", fail_on_seg)
    with pytest.raises(OSError, match="disk full"):
        save_case(tmp_path, "c", np.ones((1, 4, 4, 4), np.float32), np.ones((1, 4, 4, 4), np.int8),
                  {"spacing": [1, 1, 1]}, patch_size=(4, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_remove_temporary_files(tmp_path: Path) -> None:
    (tmp_path / ".c.b2nd.x1y2.tmp.b2nd").write_bytes(b"partial")
    (tmp_path / "keep.json").write_text("{}")
    assert remove_temporary_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_reads_nnunet_legacy_npz_with_json(expected_dir: Path) -> None:
    folder = expected_dir / "Dataset901_SynthAniso" / "preprocessed_3d_fullres"
    data, seg, props = load_case(folder, "syn_000")
    assert data.dtype == np.float32 and data.shape[0] == 2 and seg.shape[1:] == data.shape[1:]
    assert props["class_locations"][1].shape[1] == 4


def test_reads_nnunet_legacy_npz_with_pkl(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "c.npz", data=np.ones((1, 2, 3, 4), np.float32), seg=np.zeros((1, 2, 3, 4), np.int16))
    with (tmp_path / "c.pkl").open("wb") as f:
        pickle.dump({"spacing": (1.0, 1.0, 1.0), "class_locations": {1: np.array([[0, 1, 1, 1]])}}, f)
    data, seg, props = load_case(tmp_path, "c")
    assert data.shape == (1, 2, 3, 4) and seg.dtype == np.int16 and props["spacing"] == (1.0, 1.0, 1.0)
    assert list_cases(tmp_path) == ["c"]


def test_pkl_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.ones((1, 2, 2, 2), np.float32))
    (tmp_path / "c.pkl").write_bytes(pickle.dumps({"spacing": [1, 1, 1], "x": Path("/")}))
    with pytest.raises(ValueError, match="refusing"):
        load_case(tmp_path, "c")


def test_missing_case_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nnseg preprocess"):
        load_case(tmp_path, "nope")
    assert case_paths(tmp_path, "x")[1].name == "x_seg.b2nd"


def test_class_locations_as_lists_or_arrays_give_the_same_json() -> None:
    rows = [[0, 1, 2, 3], [0, 4, 5, 6]]
    as_lists = {"spacing": [1, 1, 1], "class_locations": {1: rows, (1, 2): [], 2: [[np.int64(0), 1, 2, 3]]}}
    as_arrays = {"spacing": [1, 1, 1], "class_locations": {1: np.array(rows), (1, 2): np.zeros((0, 4), np.int64),
                                                           2: np.array([[0, 1, 2, 3]])}}
    assert store.properties_to_json(as_lists) == store.properties_to_json(as_arrays)
    assert all(type(i) is int for i in store.properties_to_json(as_lists)["class_locations"]["2"][0])
