"""Checks of a whole training run before anything is written: data listing, label values, plans, pretrained weights.

:func:`nnseg.training.setup.make_run_spec` runs them (config values are checked when a TrainConfig is made, see
``config.FIELD_RULES``). Every failure is a ``ValueError`` naming the file or setting and the fix. Costs: the listing
and the plans checks read directory entries and the plans only; the label check reads every segmentation of the fold
once (min/max per case: about 2 ms for a Hippocampus-sized case, 30-45 ms for 200x256x256); the weights check loads the
checkpoint on the CPU and compares shapes against the network built on the ``meta`` device (no memory used).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg.networks import build_network
from nnseg.networks.memory import estimate_feature_map_size
from nnseg.preprocessed.store import load_case
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.training.finetune import TargetInfo, check_transfer, plan_transfer
from nnseg.training.pretrained import read_pretrained
from nnseg.training.splits import some_cases

PATCH_OVER_IMAGE_LIMIT = 2.0  # a patch axis more than twice the largest image on that axis is nearly all padding
BYTES_PER_FEATURE = 4  # lower bound: one fp32 activation per feature-map element kept for the backward pass.
# nnU-Net's planner budgets ~7 bytes per element and sample (560e6 elements x batch 2 = 8 GB), so a planned
# configuration is never refused on the GPU it was planned for; only patches that cannot fit at all are.


def expected_cases(preprocessed_dataset_folder: Path, spec: DatasetSpec) -> list[str] | None:
    """The dataset's training cases from ``gt_segmentations`` (preprocessing copies every label there before it
    preprocesses any case); None when that folder is missing or empty."""
    gt = Path(preprocessed_dataset_folder) / "gt_segmentations"
    ending = spec.file_ending
    if not gt.is_dir():
        return None
    names = sorted(p.name[: -len(ending)] for p in gt.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
    return names or None


def check_dataset_complete(preprocessed: Sequence[str], *, preprocessed_dataset_folder: Path, data_folder: Path,
                           spec: DatasetSpec, fix: str) -> None:
    """Refuse a data folder lacking cases of the dataset (a partial preprocessing: disk full, killed, ...)."""
    expected = expected_cases(preprocessed_dataset_folder, spec)
    if expected is not None:
        missing = sorted(set(expected) - set(preprocessed))
        if missing:
            raise ValueError(f"{data_folder} lacks {len(missing)} of the {len(expected)} cases in "
                             f"{Path(preprocessed_dataset_folder) / 'gt_segmentations'} (an interrupted or failed "
                             f"preprocessing?): {some_cases(missing)}. {fix}; nnseg does not train on a subset")
    elif len(preprocessed) < spec.num_training:
        raise ValueError(f"{data_folder} holds {len(preprocessed)} preprocessed cases but dataset.json's numTraining is "
                         f"{spec.num_training} (an interrupted or failed preprocessing?). {fix}")


def check_label_values(data_folder: Path, identifiers: Sequence[str], spec: DatasetSpec, *,
                       fix: str) -> dict[str, tuple[int, ...]]:
    """Refuse segmentations holding label values dataset.json does not declare; returns each case's image shape."""
    # -1: outside the non-zero mask (nnU-Net's preprocessing); every ignore label was written as the lowest one
    allowed = sorted({-1, *spec.all_labels, *spec.ignore_values[:1]})
    consecutive = allowed == list(range(allowed[0], allowed[-1] + 1))
    shapes: dict[str, tuple[int, ...]] = {}
    for identifier in identifiers:
        data, seg, _ = load_case(data_folder, identifier)
        shapes[identifier] = tuple(int(s) for s in data.shape[1:])
        if seg is None:
            continue
        values = np.asarray(seg[...])
        check_drawn_labels(identifier, values, spec, data_folder=data_folder)
        if consecutive and values.size and allowed[0] <= values.min() and values.max() <= allowed[-1]:
            continue
        bad = sorted(set(np.unique(values).tolist()) - set(allowed))
        if bad and set(bad) <= set(spec.ignore_values):
            raise ValueError(f"case {identifier} in {data_folder} holds ignore label value(s) {bad} that preprocessing "
                             f"should have written as {spec.ignore_label} (dataset.json's ignore_labels): it was "
                             f"preprocessed by a tool that does not read the key (nnU-Net?). {fix}")
        if bad:
            raise ValueError(f"case {identifier} in {data_folder} has label value(s) {bad} that dataset.json does not "
                             f"declare (labels: {spec.labels}). Declare them in dataset.json or fix the case's "
                             f"segmentation in labelsTr, then {fix}")
    return shapes


def check_drawn_labels(identifier: str, seg: np.ndarray, spec: DatasetSpec, *, data_folder: Path) -> None:
    """Refuse a partially annotated case (``annotated_labels``) holding a label it says it does not draw."""
    partial = spec.partial_labels
    missing = () if partial is None or spec.has_regions else partial.missing(identifier)
    if not missing:
        return
    found = sorted(int(v) for v in np.unique(seg) if int(v) in missing)
    if found:
        raise ValueError(f"case {identifier} in {data_folder} holds label(s) {found} that dataset.json's "
                         f"annotated_labels says it does not annotate ({partial.annotated[identifier]}); add them to "
                         f"annotated_labels[{identifier!r}] in dataset.json, or remove the case from the key")


def check_partial_cases(spec: DatasetSpec, identifiers: Sequence[str], *, data_folder: Path) -> None:
    """Refuse ``annotated_labels`` naming cases the preprocessed data lacks (a typo would train them as complete)."""
    partial = spec.partial_labels
    unknown = sorted(set(partial.annotated) - set(identifiers)) if partial is not None else []
    if unknown:
        raise ValueError(f"dataset.json's annotated_labels names {len(unknown)} case(s) that {data_folder} lacks: "
                         f"{some_cases(unknown)}; use the case identifiers (nnseg verify lists the problems)")


def available_memory_bytes(device: torch.device) -> int | None:
    """Total memory of the device training runs on (RAM for the CPU, cgroup limit included); None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "mps":
        rec = getattr(torch.mps, "recommended_max_memory", None)
        return int(rec()) if rec is not None else None
    total = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in getattr(os, "sysconf_names", {}):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        total = min(total or math.inf, int(limit)) if limit.isdigit() else total
    except OSError:
        pass
    return None if total is None else int(total)


def check_plans_plausible(*, architecture: dict[str, Any], patch_size: Sequence[int], batch_size: int,
                          input_channels: int, num_heads: int, deep_supervision: bool,
                          image_shapes: dict[str, tuple[int, ...]], available: int | None, where: str) -> None:
    """Refuse a patch far larger than every image, or a patch x batch that cannot fit in the device's memory."""
    patch = [int(p) for p in patch_size]
    if image_shapes:
        largest = [max(s[-len(patch):][i] for s in image_shapes.values()) for i in range(len(patch))]
        if any(p > PATCH_OVER_IMAGE_LIMIT * m for p, m in zip(patch, largest)):
            raise ValueError(f"{where}: patch_size {patch} is far larger than the largest preprocessed image {largest} "
                             f"(more than {PATCH_OVER_IMAGE_LIMIT:g}x on an axis, so patches are mostly padding). Set "
                             "patch_size in the plans to at most the image size, or re-plan (nnUNetv2_plan_experiment)")
    if available is None:
        return
    features = estimate_feature_map_size(architecture, patch, input_channels=input_channels, num_classes=num_heads,
                                         deep_supervision=deep_supervision)
    need = batch_size * (features * BYTES_PER_FEATURE + input_channels * math.prod(patch) * 4)
    if need > available:
        raise ValueError(f"{where}: patch_size {patch} with batch_size {batch_size} needs at least {need / 2**30:.1f} GiB "
                         f"for the network's activations (nnseg.networks.memory estimate) but the device has "
                         f"{available / 2**30:.1f} GiB. Lower patch_size/batch_size in the plans (re-plan with "
                         "nnUNetv2_plan_experiment -gpu_memory_target GB), or --set batch_size=N")


def check_pretrained_weights(path: Path, *, architecture: dict[str, Any], input_channels: int, num_heads: int,
                             deep_supervision: bool, target: TargetInfo) -> None:
    """Refuse ``-pretrained_weights`` that cannot be read or of which nothing outside the heads and the input
    convolution fits the network (:mod:`nnseg.training.finetune`); other differences are loaded around."""
    source = read_pretrained(path)
    with torch.device("meta"):
        network = build_network(architecture, input_channels=input_channels, num_classes=num_heads,
                                deep_supervision=deep_supervision, initialize=False)
    _, report = plan_transfer(network.state_dict(), source, target)
    check_transfer(report, path)
