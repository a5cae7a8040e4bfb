"""Files next to a prediction that nnU-Net also reads: ``CASE.npz`` (probabilities) and ``CASE.pkl`` (properties).

nnU-Net's ensembling reads ``CASE.pkl`` with ``pickle``; nnseg writes the same plain dict (builtins and numpy scalars)
so either tool can ensemble the other's output. nnseg *reads* such files with a restricted unpickler that only
builds numpy arrays, dtypes and scalars and a few plain containers: anything else is refused by name.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path
from nnseg.predictions.export.npz_stream import NpzStreamWriter
from nnseg.safe_pickle import restricted_loads

PROPERTY_KEYS_AFTER_READER = ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling")
def load_properties_pkl(path: PathLike) -> dict[str, Any]:
    """Read an nnU-Net properties ``.pkl`` (numpy arrays/dtypes/scalars and builtins only).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it holds any other object (the global is named) or is not a properties dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"properties file {path} does not exist; nnU-Net writes it next to CASE.npz with "
                                "--save_probabilities (or --npz in training)")
    try:
        props = restricted_loads(path.read_bytes())
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to read {path}: it holds {e}, which is not a numpy array/dtype/scalar or a plain "
                         "Python value; regenerate the file with nnU-Net or nnseg") from None
    except (EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a readable properties pickle ({e})") from None
    if not isinstance(props, dict):
        raise ValueError(f"{path} holds a {type(props).__name__}, expected nnU-Net's properties dict")  # noqa: TRY004
    return props


def properties_for_pickle(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The properties dict as nnU-Net pickles it next to a prediction.

    Reader keys first (``sitk_stuff`` / ``nibabel_stuff`` / others, ``spacing`` as ``np.float64`` list), then
    ``shape_before_cropping`` (tuple), ``bbox_used_for_cropping`` (list of ``[lo, hi]``),
    ``shape_after_cropping_and_before_resampling`` (tuple); training-only keys (``class_locations``) are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in properties.items():
        if key in PROPERTY_KEYS_AFTER_READER or key == "class_locations":
            continue
        out[key] = [np.float64(v) for v in value] if key == "spacing" else value
    if "shape_before_cropping" in properties:
        out["shape_before_cropping"] = tuple(int(v) for v in properties["shape_before_cropping"])
    if "bbox_used_for_cropping" in properties:
        out["bbox_used_for_cropping"] = [[int(lo), int(hi)] for lo, hi in properties["bbox_used_for_cropping"]]
    if "shape_after_cropping_and_before_resampling" in properties:
        out["shape_after_cropping_and_before_resampling"] = tuple(
            int(v) for v in properties["shape_after_cropping_and_before_resampling"])
    return out


def save_properties_pkl(properties: Mapping[str, Any], path: PathLike) -> None:
    """Write ``CASE.pkl`` atomically (the nnU-Net-compatible artifact; nnseg's own artifacts are JSON)."""
    data = pickle.dumps(properties_for_pickle(properties), protocol=4)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_probabilities_npz(probabilities: np.ndarray, path: PathLike) -> None:
    """Write ``CASE.npz`` with key ``probabilities`` (float32 ``(K, X, Y, Z)``), compressed on every core, atomically
    (the format of nnU-Net's ``np.savez_compressed``, see :mod:`nnseg.predictions.export.npz_stream`)."""
    array = np.asarray(probabilities, dtype=np.float32)
    with atomic_path(path) as tmp, NpzStreamWriter(tmp, "probabilities", array.shape) as writer:
        writer.write(array)


def load_probabilities_npz(path: PathLike) -> np.ndarray:
    """Read ``probabilities`` from ``CASE.npz`` (no pickled objects allowed).

    Raises:
        FileNotFoundError / ValueError: the file is missing or lacks the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probabilities file {path} does not exist; predict with --save_probabilities")
    with np.load(path, allow_pickle=False) as z:
        if "probabilities" not in z.files:
            raise ValueError(f"{path} has no 'probabilities' array (found {z.files})")
        return np.asarray(z["probabilities"], dtype=np.float32)
