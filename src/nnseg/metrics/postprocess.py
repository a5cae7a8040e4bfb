"""Postprocessing: keep the largest connected component, chosen by nnU-Net's greedy rules on cross-validation results.

Pure core:

* :func:`remove_all_but_largest_component` (binary mask) and the registered step
  ``remove_all_but_largest_component`` (= nnU-Net's ``remove_all_but_largest_component_from_segmentation``): the
  union of the given labels/regions is split into connected components and every component but the largest is set to
  ``background_label``. Connectivity is **full** by default (26-neighbourhood in 3D, 8 in 2D), as nnU-Net, which
  calls ``acvl_utils``' ``remove_all_but_largest_component`` with ``connectivity=None`` = skimage's full
  connectivity. When several components share the largest size, all of them are kept (as ``acvl_utils``).
* :func:`apply_postprocessing`: run a list of :class:`PostprocessingStep` in order.

Decision (:func:`determine_postprocessing`, nnU-Net's ``determine_postprocessing``):

1. keep the largest component of the union of all foreground labels: accepted only if ``foreground_mean`` Dice
   improves **and** no label/region's mean Dice gets worse;
2. then, only if there is more than one label/region, for each label/region in ``dataset.json`` order: keep the
   largest component of that label/region, accepted if that label/region's mean Dice improves (each trial starts
   from the result of the accepted steps so far).

Outputs in the prediction folder: ``postprocessing.json`` (nnU-Net's keys ``input_folder``, ``postprocessed``,
``postprocessing_fns``, ``postprocessing_kwargs``, plus ``steps`` by registered name), ``postprocessing.pkl``
(nnU-Net's format, see :mod:`nnseg.metrics.postprocess_pkl`) and ``postprocessed/`` (segmentations + summary.json).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from nnseg._types import LabelOrRegion, PathLike
from nnseg.jsonio import load_json, save_json, to_jsonable
from nnseg.metrics.overlap import (
    key_to_label_or_region,
    label_or_region_to_key,
    region_or_label_to_mask,
)
from nnseg.metrics.postprocess_pkl import (
    NNUNET_PP_FUNCTION,
    load_postprocessing_pkl,
    save_postprocessing_pkl,
)
from nnseg.registry import Registry

PP_STEPS: Registry[Callable[..., np.ndarray]] = Registry("postprocessing step")
LARGEST_COMPONENT = "remove_all_but_largest_component"


def remove_all_but_largest_component(mask: np.ndarray, *, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component(s) of a binary mask.

    Args:
        mask: boolean array of any dimensionality.
        connectivity: how many orthogonal hops make two voxels neighbours (1 = faces only, ``mask.ndim`` = full);
            None (default) means full connectivity, as nnU-Net.

    Returns:
        Boolean array, True on the largest component (all components of the largest size when there is a tie);
        all False for an empty mask.

    Example:
        >>> remove_all_but_largest_component(np.array([1, 1, 0, 1], bool)).tolist()
        [True, True, False, False]
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 0:
        raise ValueError("remove_all_but_largest_component needs an array with at least one axis, got a scalar")
    rank = mask.ndim if connectivity is None else int(connectivity)
    if not 1 <= rank <= mask.ndim:
        raise ValueError(f"connectivity must be between 1 and {mask.ndim} for a {mask.ndim}D mask, got {connectivity}")
    labeled, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labeled.ravel())[1:]
    keep = np.flatnonzero(sizes == sizes.max()) + 1
    return np.isin(labeled, keep)


def _as_list(labels_or_regions: Any) -> list[LabelOrRegion]:
    if isinstance(labels_or_regions, list):
        return [tuple(v) if isinstance(v, (list, tuple)) else int(v) for v in labels_or_regions]
    if isinstance(labels_or_regions, (tuple, np.ndarray)):
        return [tuple(int(v) for v in labels_or_regions)]
    return [int(labels_or_regions)]


@PP_STEPS.register(LARGEST_COMPONENT, aliases=(NNUNET_PP_FUNCTION[1],))
def remove_all_but_largest_component_from_segmentation(segmentation: np.ndarray, labels_or_regions: Any,
                                                       background_label: int = 0, *,
                                                       connectivity: int | None = None) -> np.ndarray:
    """Keep only the largest component of the union of ``labels_or_regions``; other voxels of it become background.

    Args:
        segmentation: integer label map ``(X, Y, Z)`` (not modified).
        labels_or_regions: a label (int), a region (tuple of labels) or a list of labels/regions (their union).
        background_label: value written where components are removed.
        connectivity: see :func:`remove_all_but_largest_component` (default full, as nnU-Net).

    Returns:
        A new label map of the same shape and dtype.
    """
    mask = np.zeros(segmentation.shape, dtype=bool)
    for label_or_region in _as_list(labels_or_regions):
        mask |= region_or_label_to_mask(segmentation, label_or_region)
    keep = remove_all_but_largest_component(mask, connectivity=connectivity)
    out = np.array(segmentation, copy=True)
    out[mask & ~keep] = background_label
    return out


@dataclass(frozen=True)
class PostprocessingStep:
    """One postprocessing operation: a registered step name (:data:`PP_STEPS`) and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": to_jsonable(self.kwargs)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PostprocessingStep:
        if not isinstance(d, Mapping) or "name" not in d:
            raise ValueError(f"a postprocessing step must be {{'name': ..., 'kwargs': {{...}}}}, got {d!r}")
        name = str(d["name"])
        name = LARGEST_COMPONENT if name == NNUNET_PP_FUNCTION[1] else name  # nnU-Net's function name
        if name not in PP_STEPS:
            raise ValueError(f"unknown postprocessing step {name!r}; registered: {PP_STEPS.names()}")
        kwargs = dict(d.get("kwargs") or {})
        if "labels_or_regions" in kwargs and isinstance(kwargs["labels_or_regions"], list):
            kwargs["labels_or_regions"] = _as_list(kwargs["labels_or_regions"])
        return cls(name=name, kwargs=kwargs)


def apply_postprocessing(segmentation: np.ndarray, steps: Sequence[PostprocessingStep]) -> np.ndarray:
    """Apply ``steps`` in order to a label map ``(X, Y, Z)``; returns a new array (the input is not modified)."""
    out = segmentation
    for step in steps:
        out = PP_STEPS[step.name](out, **step.kwargs)
    return np.array(out, copy=True) if out is segmentation else out


def steps_from_postprocessing_json(d: Mapping[str, Any], *, source: PathLike = "postprocessing.json") -> list[PostprocessingStep]:
    """Steps from nnseg's ``steps`` key, else from nnU-Net's ``postprocessing_fns`` / ``postprocessing_kwargs``."""
    if "steps" in d:
        return [PostprocessingStep.from_json(s) for s in d["steps"]]
    if "postprocessing_fns" not in d:
        raise ValueError(f"{source} has neither 'steps' nor 'postprocessing_fns'; regenerate it with nnseg determine-pp")
    fns, kwargs = list(d["postprocessing_fns"]), list(d.get("postprocessing_kwargs", []))
    if len(fns) != len(kwargs):
        raise ValueError(f"{source}: {len(fns)} postprocessing_fns but {len(kwargs)} postprocessing_kwargs")
    return [PostprocessingStep.from_json({"name": f, "kwargs": k}) for f, k in zip(fns, kwargs)]


def load_postprocessing(path: PathLike) -> list[PostprocessingStep]:
    """Read the steps of ``postprocessing.json`` or nnU-Net's ``postprocessing.pkl`` (restricted reader)."""
    path = Path(path)
    if path.suffix == ".pkl":
        return [PostprocessingStep(name, kwargs) for name, kwargs in load_postprocessing_pkl(path)]
    if path.suffix != ".json":
        raise ValueError(f"postprocessing file {path} must be postprocessing.json or postprocessing.pkl")
    if not path.is_file():
        raise FileNotFoundError(f"postprocessing file {path} does not exist; run nnseg determine-pp first")
    return steps_from_postprocessing_json(load_json(path), source=path)


def load_summary(path: PathLike) -> dict[str, Any]:
    """A ``summary.json`` with ``mean`` keyed by label (int) / region (tuple), as nnU-Net's ``load_summary_json``."""
    d = load_json(path)
    d["mean"] = {key_to_label_or_region(k): v for k, v in d["mean"].items()}
    return d


def improves_all_foreground(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Rule 1: ``foreground_mean`` Dice strictly improves and no label/region's mean Dice decreases (NaN never wins)."""
    if not after["foreground_mean"]["Dice"] > before["foreground_mean"]["Dice"]:
        return False
    return not any(after["mean"][k]["Dice"] < before["mean"][k]["Dice"] for k in after["mean"])


def improves_label(before: Mapping[str, Any], after: Mapping[str, Any], label_or_region: LabelOrRegion) -> bool:
    """Rule 2: the mean Dice of ``label_or_region`` strictly improves."""
    return bool(after["mean"][label_or_region]["Dice"] > before["mean"][label_or_region]["Dice"])


def all_foreground_labels(labels_or_regions: Sequence[LabelOrRegion]) -> list[int]:
    """The label integers inside ``labels_or_regions`` (nnU-Net's ``foreground_labels``), sorted."""
    values = {int(v) for r in labels_or_regions for v in (r if isinstance(r, (tuple, list)) else [r])}
    return sorted(values)


def postprocessing_json(steps: Sequence[PostprocessingStep], before: Mapping[str, Any],
                        after: Mapping[str, Any]) -> dict[str, Any]:
    """nnU-Net's ``postprocessing.json`` content plus nnseg's ``steps``."""
    def results(s: Mapping[str, Any]) -> dict[str, Any]:
        return {"foreground_mean": dict(s["foreground_mean"]),
                "mean": {label_or_region_to_key(k): v for k, v in s["mean"].items()}}

    return {
        "input_folder": results(before),
        "postprocessed": results(after),
        "postprocessing_fns": [NNUNET_PP_FUNCTION[1] if s.name == LARGEST_COMPONENT else s.name for s in steps],
        "postprocessing_kwargs": [to_jsonable({k: v for k, v in s.kwargs.items() if k != "background_label"})
                                  for s in steps],
        "steps": [s.to_json() for s in steps],
    }


def save_postprocessing(folder: PathLike, steps: Sequence[PostprocessingStep], before: Mapping[str, Any],
                        after: Mapping[str, Any]) -> None:
    """Write ``postprocessing.json`` (sorted keys, as nnU-Net's ``save_json``) and ``postprocessing.pkl``."""
    folder = Path(folder)
    save_json(postprocessing_json(steps, before, after), folder / "postprocessing.json", sort_keys=True)
    save_postprocessing_pkl([(s.name, s.kwargs) for s in steps], folder / "postprocessing.pkl")
