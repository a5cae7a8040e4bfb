"""Preprocessed case storage: blosc2 ``.b2nd`` arrays plus a JSON properties file, as nnU-Net 2.8 lays them out.

Per case in ``nnUNet_preprocessed/DatasetX/<data_identifier>/``:

* ``CASE.b2nd``: float32 ``(C, X, Y, Z)`` image data;
* ``CASE_seg.b2nd``: the integer segmentation ``(1, X, Y, Z)`` (-1 outside the non-zero mask);
* ``CASE.json``: the properties (nnU-Net writes ``CASE.pkl``; nnseg never pickles, see ``properties_to_json``).

Arrays are compressed with LZ4HC level 5 and the better of NOFILTER/SHUFFLE (chosen by trial compression); chunks and
blocks are sized from the training patch (block <= 128 KiB, chunk <= 6 MiB and <= 1.5x the patch per axis, never more
than one channel) so that reading one patch decompresses only the chunks it overlaps. Files are opened memory-mapped
(except on Windows). Every file is written under a temporary name and renamed, the properties last: a case is complete
exactly when its ``.json`` exists next to both arrays.

nnU-Net's legacy format (``CASE.npz`` with ``data``/``seg``, or unpacked ``CASE.npy``/``CASE_seg.npy``) is read too.
"""

from __future__ import annotations

import json
import math
import pickle
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nnseg.jsonio import atomic_path, load_json, to_jsonable
from nnseg.jsonio import remove_temporary_files as remove_atomic_leftovers
from nnseg.safe_pickle import restricted_loads

if TYPE_CHECKING:
    import blosc2  # imported where used: a process that only lists or removes cases (the parent of a pool) skips it

BLOCK_MAX_BYTES = 128 * 1024
CHUNK_MAX_BYTES = 6 * 1024 * 1024
CHUNK_MAX_PATCH_FACTOR = 1.5
CLEVEL = 5
_TRIAL_MAX_BYTES = 512 * 1024


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def chunks_and_blocks(shape: Sequence[int], patch_size: Sequence[int] | None, itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunk and block shapes for an array ``(C, *spatial)`` read in patches of ``patch_size``.

    Blocks start at the patch rounded up to a power of two (at most 1.5x the patch) and are halved along the axis largest relative to the patch
    until they fit ``BLOCK_MAX_BYTES``; chunks then grow block by block along the axis smallest relative to the patch
    while they stay within ``CHUNK_MAX_BYTES``, ``CHUNK_MAX_PATCH_FACTOR`` x patch and the array. The channel axis is 1.
    With a 2D patch (one entry fewer than the spatial axes) blocks are single slices and a chunk may hold many slices
    (up to ``CHUNK_MAX_BYTES``): blosc2 decompresses only the blocks a slice read touches, and writing one chunk per
    slice costs ~0.15 ms of frame bookkeeping per slice (4x the compression of a Hippocampus case).

    Args:
        shape: array shape ``(C, X, Y, Z)`` (or ``(C, 1, X, Y)`` for 2D data).
        patch_size: training patch (one entry per spatial axis, or one fewer for 2D data); None = whole image.
        itemsize: bytes per element.
    """
    spatial = [int(s) for s in shape[1:]]
    patch = list(spatial) if patch_size is None else [int(p) for p in patch_size]
    if len(patch) not in (len(spatial), len(spatial) - 1):
        raise ValueError(f"patch_size {list(patch_size or [])} does not fit array shape {list(shape)}; "
                         "give one entry per spatial axis")
    slice_axes = len(spatial) - len(patch)  # 2D data (C, 1, X, Y) or a 2D patch of 3D data: patches are slices
    patch = [max(1, min(p, s)) for p, s in zip([1] * slice_axes + patch, spatial)]
    block = [min(_pow2_ceil(p), int(CHUNK_MAX_PATCH_FACTOR * p), s) for p, s in zip(patch, spatial)]
    while math.prod(block) * itemsize > BLOCK_MAX_BYTES and max(block) > 1:
        axis = max((a for a in range(len(block)) if block[a] > 1), key=lambda a: (block[a] / patch[a], block[a]))
        block[axis] = max(1, block[axis] // 2)
    chunk = list(block)
    while True:
        grow = [a for a in range(len(chunk)) if chunk[a] < spatial[a]
                and (a < slice_axes or chunk[a] + block[a] <= CHUNK_MAX_PATCH_FACTOR * patch[a])]
        if not grow:
            break
        axis = min(grow, key=lambda a: chunk[a] / patch[a])
        trial = list(chunk)
        trial[axis] = min(chunk[axis] + block[axis], spatial[axis])
        if math.prod(trial) * itemsize > CHUNK_MAX_BYTES:
            break
        chunk = trial
    return (1, *chunk), (1, *block)


def _cparams(array: np.ndarray, filt: blosc2.Filter, nthreads: int, *, codec: str = "LZ4HC") -> dict[str, Any]:
    """blosc2 compression parameters as the dict blosc2 turns a ``CParams`` into (``dataclasses.asdict`` deep-copies
    them on every call: ~0.2 ms, as much as compressing a small chunk); built once per setting, copied per use."""
    cached = _cparams_dict(codec, filt, array.dtype.itemsize, nthreads)
    return {k: list(v) if isinstance(v, list) else v for k, v in cached.items()}


@lru_cache(maxsize=64)
def _cparams_dict(codec: str, filt: blosc2.Filter, typesize: int, nthreads: int) -> dict[str, Any]:
    import dataclasses

    import blosc2

    return dataclasses.asdict(blosc2.CParams(codec=blosc2.Codec[codec], clevel=CLEVEL, filters=[filt],
                                             typesize=typesize, nthreads=nthreads))


def choose_filter(array: np.ndarray, chunks: Sequence[int]) -> blosc2.Filter:
    """The filter (NOFILTER or SHUFFLE) that compresses a central chunk-sized sample of ``array`` smaller.

    The trial uses the fast LZ4 codec (the filter's effect on the size carries over to LZ4HC at a fraction of the
    cost); ties go to SHUFFLE.
    """
    import blosc2

    if array.dtype.itemsize == 1:
        return blosc2.Filter.NOFILTER
    region = tuple(slice(max(0, (s - c) // 2), max(0, (s - c) // 2) + c) for s, c in zip(array.shape, chunks))
    sample = np.ascontiguousarray(array[region]).reshape(-1)[: _TRIAL_MAX_BYTES // array.dtype.itemsize]
    sizes = {}
    for filt in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE):
        sizes[filt] = len(blosc2.compress2(sample, cparams=_cparams(sample, filt, 1, codec="LZ4")))
    return min(sizes, key=lambda f: (sizes[f], f != blosc2.Filter.SHUFFLE))


def write_b2nd(array: np.ndarray, path: Path, *, patch_size: Sequence[int] | None, nthreads: int = 1) -> None:
    """Write ``array`` (``(C, ...)``) atomically to ``path`` (a ``.b2nd`` file) with patch-aware chunks."""
    with atomic_path(path) as tmp:
        _write_b2nd_to(array, tmp, patch_size=patch_size, nthreads=nthreads)


def _write_b2nd_to(array: np.ndarray, path: Path, *, patch_size: Sequence[int] | None, nthreads: int) -> None:
    import blosc2

    array = np.ascontiguousarray(array)
    chunks, blocks = chunks_and_blocks(array.shape, patch_size, array.dtype.itemsize)
    filt = choose_filter(array, chunks)
    if path.exists():
        path.unlink()
    blosc2.asarray(array, urlpath=str(path), mode="w", chunks=chunks, blocks=blocks,
                   cparams=_cparams(array, filt, nthreads))


def open_b2nd(path: Path, *, mmap: bool | None = None) -> blosc2.NDArray:
    """Open a ``.b2nd`` file lazily (slicing returns numpy and decompresses only the chunks touched)."""
    import blosc2

    use_mmap = (sys.platform != "win32") if mmap is None else mmap
    kwargs: dict[str, Any] = {"mmap_mode": "r"} if use_mmap else {}
    try:
        return blosc2.open(str(path), mode="r", dparams=blosc2.DParams(nthreads=1), **kwargs)
    except Exception as e:  # blosc2 raises several types for damaged files
        raise ValueError(f"cannot read {path} ({type(e).__name__}: {e}); delete it and rerun preprocessing") from None


def properties_to_json(properties: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of nnU-Net's properties dict (numpy -> lists; class_locations keys -> strings)."""
    out = {k: v for k, v in properties.items() if k != "class_locations"}
    out = to_jsonable(out)
    if "class_locations" in properties:  # large: converted in one numpy call per class instead of element-wise
        out["class_locations"] = {_key_to_str(k): v if _is_int_rows(v) else np.asarray(v, dtype=np.int64).tolist()
                                  for k, v in properties["class_locations"].items()}
    return out


def _is_int_rows(value: Any) -> bool:
    """True for a list of lists of Python ints (what ``sample_class_locations`` returns): already JSON-ready.
    Only the first row is looked at (the lists hold up to 10 000 rows of one type)."""
    return type(value) is list and (not value or (type(value[0]) is list and all(type(i) is int for i in value[0])))


def _key_to_str(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (tuple, list)):
        return "(" + ", ".join(str(int(k)) for k in key) + ("," if len(key) == 1 else "") + ")"
    return str(int(key))


def _key_from_str(key: str) -> int | tuple[int, ...]:
    text = key.strip()
    if text.startswith("("):
        return tuple(int(k) for k in text.strip("()").split(",") if k.strip())
    return int(text)


def properties_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`properties_to_json`: class_locations keys back to int/tuple, coordinates to int arrays ``(N, 1+ndim)``."""
    out = dict(data)
    if "class_locations" in out:
        out["class_locations"] = {
            _key_from_str(k): np.asarray(v, dtype=np.int64).reshape(-1, len(out.get("spacing", [0, 0, 0])) + 1)
            for k, v in out["class_locations"].items()}
    return out


def case_paths(folder: Path, identifier: str) -> tuple[Path, Path, Path]:
    """``(CASE.b2nd, CASE_seg.b2nd, CASE.json)`` in ``folder``."""
    folder = Path(folder)
    return folder / f"{identifier}.b2nd", folder / f"{identifier}_seg.b2nd", folder / f"{identifier}.json"


def save_case(folder: Path, identifier: str, data: np.ndarray, seg: np.ndarray | None, properties: Mapping[str, Any], *,
              patch_size: Sequence[int] | None, nthreads: int = 1) -> None:
    """Write one preprocessed case; the properties JSON is renamed into place last (it marks the case complete).

    Args:
        folder: the configuration's data folder (``nnUNet_preprocessed/DatasetX/<data_identifier>``).
        identifier: case identifier (file names ``CASE.b2nd``, ``CASE_seg.b2nd``, ``CASE.json``).
        data: float32 ``(C, X, Y, Z)``.
        seg: integer ``(1, X, Y, Z)``, or None (no ``_seg`` file; e.g. unlabelled prediction input).
        properties: nnU-Net's properties dict (numpy values allowed).
        patch_size: the configuration's patch size, used to size the chunks.
        nthreads: blosc2 compression threads.
    """
    folder = Path(folder)
    data_path, seg_path, json_path = case_paths(folder, identifier)
    if json_path.exists():
        json_path.unlink()  # the case is incomplete until everything is rewritten
    if seg is None and seg_path.exists():
        seg_path.unlink()
    props_json = properties_to_json(properties)
    # Everything is written under temporary names first; the renames happen on leaving the contexts, in reverse
    # order of entering: data, seg, then the properties JSON that marks the case complete.
    with ExitStack() as stack:
        tmp_json = stack.enter_context(atomic_path(json_path))
        tmp_seg = stack.enter_context(atomic_path(seg_path)) if seg is not None else None
        tmp_data = stack.enter_context(atomic_path(data_path))
        _write_b2nd_to(np.asarray(data, dtype=np.float32), tmp_data, patch_size=patch_size, nthreads=nthreads)
        if tmp_seg is not None:
            _write_b2nd_to(np.asarray(seg), tmp_seg, patch_size=patch_size, nthreads=nthreads)
        tmp_json.write_text(json.dumps(props_json, separators=(",", ":")), encoding="utf-8")


def case_is_complete(folder: Path, identifier: str, *, with_seg: bool = True) -> bool:
    """True when the case's data array, (seg array,) and properties JSON all exist."""
    data_path, seg_path, json_path = case_paths(folder, identifier)
    return json_path.is_file() and data_path.is_file() and (seg_path.is_file() or not with_seg)


def remove_case(folder: Path, identifier: str) -> None:
    """Delete a case's files (properties first, so a crash in between never leaves a 'complete' case)."""
    data_path, seg_path, json_path = case_paths(folder, identifier)
    for path in (json_path, data_path, seg_path):
        if path.exists():
            path.unlink()


def remove_temporary_files(folder: Path) -> int:
    """Delete leftovers of interrupted writes (hidden ``.NAME.*.tmp*`` files); returns how many were removed."""
    return len(remove_atomic_leftovers(folder))


def list_cases(folder: Path) -> list[str]:
    """Identifiers of the complete cases in ``folder`` (blosc2 or legacy npz/npy), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    ids = set()
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        for ending in (".b2nd", ".npz", ".npy"):
            if p.name.endswith(ending) and not p.name.endswith("_seg" + ending):
                ids.add(p.name[: -len(ending)])
    return sorted(i for i in ids if (folder / f"{i}.json").is_file() or (folder / f"{i}.pkl").is_file())


def load_properties(folder: Path, identifier: str) -> dict[str, Any]:
    """A case's properties from ``CASE.json`` (nnseg) or, for data written by nnU-Net, ``CASE.pkl``."""
    folder = Path(folder)
    json_path = folder / f"{identifier}.json"
    if json_path.is_file():
        return properties_from_json(load_json(json_path))
    pkl_path = folder / f"{identifier}.pkl"
    if pkl_path.is_file():
        return _load_nnunet_pickle(pkl_path)
    raise FileNotFoundError(f"no properties for case {identifier!r} in {folder} (expected {json_path.name}); "
                            "rerun preprocessing (nnseg preprocess) for this dataset")


def _load_nnunet_pickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        try:
            return dict(restricted_loads(f.read()))
        except pickle.UnpicklingError as e:
            raise ValueError(f"refusing to load {e} from nnU-Net properties file {path} (only numpy values and plain "
                             "Python values are read); rerun preprocessing") from None
        except (EOFError, AttributeError, ValueError) as e:
            raise ValueError(f"cannot read nnU-Net properties file {path} ({e}); rerun preprocessing") from None


def load_case(folder: Path, identifier: str, *, mmap: bool | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Open one preprocessed case.

    Args:
        folder: the configuration's data folder.
        identifier: case identifier.
        mmap: memory-map the files (default: yes except on Windows).

    Returns:
        ``(data, seg, properties)``: ``data`` ``(C, X, Y, Z)`` and ``seg`` ``(1, X, Y, Z)`` are lazy blosc2 arrays
        (slicing returns numpy and decompresses only the chunks touched; ``[...]`` reads everything) for ``.b2nd``
        cases, numpy (memory-mapped where possible) for legacy ``.npy``/``.npz`` cases; ``seg`` is None when no
        segmentation was stored.
    """
    folder = Path(folder)
    data_path, seg_path, _ = case_paths(folder, identifier)
    if data_path.is_file():
        data = open_b2nd(data_path, mmap=mmap)
        seg = open_b2nd(seg_path, mmap=mmap) if seg_path.is_file() else None
    else:
        data, seg = _load_legacy(folder, identifier)
    return data, seg, load_properties(folder, identifier)


def _load_legacy(folder: Path, identifier: str) -> tuple[np.ndarray, np.ndarray | None]:
    npy, npy_seg, npz = folder / f"{identifier}.npy", folder / f"{identifier}_seg.npy", folder / f"{identifier}.npz"
    if npy.is_file():
        seg = np.load(npy_seg, mmap_mode="r") if npy_seg.is_file() else None
        return np.load(npy, mmap_mode="r"), seg
    if npz.is_file():
        with np.load(npz) as z:
            if "data" not in z.files:
                raise ValueError(f"{npz} has no 'data' array (found {z.files}); it is not an nnU-Net preprocessed case")
            return z["data"], (z["seg"] if "seg" in z.files else None)
    raise FileNotFoundError(f"no preprocessed data for case {identifier!r} in {folder} (looked for {identifier}.b2nd, "
                            f".npz, .npy); run `nnseg preprocess` for this dataset and configuration")
