"""Full-image validation during training (``--set full_val_every=N``): the Dice of whole validation images.

nnU-Net picks ``checkpoint_best.pth`` on an EMA of a pseudo Dice over 50 random validation patches. This scores the
fold's validation cases whole: each preprocessed case is predicted with the sliding window (Gaussian weights, 50 %
overlap, no mirroring: the network's own output, so the score costs one pass per tile), arg-maxed (regions:
sigmoid > 0.5), and compared with its preprocessed segmentation at the network's spacing. Voxels of the ignore
label are left out; a case's partial-label annotation (``annotated``) leaves its unannotated labels unscored. Per
label, the Dice is the mean over the cases where it is defined (nnU-Net's rule: a label absent from both reference
and prediction gives no Dice); the score is the mean over labels.

It runs in eval mode under ``no_grad`` and draws no random numbers, so a run resumed with ``--c`` scores (and
chooses its best checkpoint) exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnseg.devices import autocast_context
from nnseg.predictions.inference.sliding_window import sliding_window_predict
from nnseg.launch.validate_cases import prev_stage_onehot
from nnseg.preprocessed.store import load_case
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.training.run_spec import RunSpec

Annotated = Callable[[str], Sequence[int] | None]


def case_dice(pred: np.ndarray, ref: np.ndarray, *, labels: Sequence[int | tuple[int, ...]], regions: bool,
              ignore_label: int | None, scored: Sequence[int] | None = None) -> list[float]:
    """Dice per label (or region) of one case; NaN where undefined or not scored (``scored``: indices into
    ``labels`` that the case's annotation covers, None: all). ``pred``: labels ``(X, Y, Z)``, or region masks
    ``(R, X, Y, Z)`` when ``regions``."""
    keep = np.ones(ref.shape, dtype=bool) if ignore_label is None else ref != ignore_label
    out = []
    for i, label in enumerate(labels):
        if scored is not None and i not in scored:
            out.append(float("nan"))
            continue
        gt = np.isin(ref, label) if regions else ref == label
        p = pred[i] if regions else pred == label
        gt, p = gt & keep, p & keep
        denominator = int(gt.sum()) + int(p.sum())
        out.append(float("nan") if denominator == 0 else 2.0 * int((gt & p).sum()) / denominator)
    return out


@dataclass(frozen=True)
class FullValidation:
    """Callable ``(network) -> Dice per foreground label or region`` over the fold's validation cases."""

    data_folder: Path
    case_ids: tuple[str, ...]
    patch_size: tuple[int, ...]
    labels: tuple[int | tuple[int, ...], ...]
    regions: bool
    ignore_label: int | None
    device: torch.device
    precision: str
    prev_stage_folder: Path | None = None
    cascade_labels: tuple[int, ...] = ()
    annotated: Annotated | None = None

    def _input(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        data, seg, _ = load_case(self.data_folder, case)
        image = np.asarray(data[...], dtype=np.float32)
        if self.prev_stage_folder is not None:
            image = np.concatenate([image, prev_stage_onehot(self.prev_stage_folder, case, self.cascade_labels)])
        ref = np.asarray(seg[...])[0] if seg is not None else np.zeros(image.shape[1:], dtype=np.int16)
        return image, np.where(ref < 0, 0, ref)

    def _predict(self, network: nn.Module, image: np.ndarray) -> np.ndarray:
        def predictor(x: torch.Tensor) -> torch.Tensor:
            with autocast_context(self.device, self.precision):
                out = network(x)
            return (out[0] if isinstance(out, (list, tuple)) else out).float()

        logits = sliding_window_predict(predictor, torch.from_numpy(image), self.patch_size,
                                        num_outputs=len(self.labels) + (0 if self.regions else 1), device=self.device)
        if self.regions:
            return (torch.sigmoid(logits) > 0.5).cpu().numpy()
        return logits.argmax(0).cpu().numpy()

    def per_case(self, network: nn.Module) -> dict[str, list[float]]:
        was_training = network.training
        network.eval()
        out = {}
        try:
            with torch.no_grad():
                for case in self.case_ids:
                    image, ref = self._input(case)
                    scored = self.annotated(case) if self.annotated is not None else None
                    out[case] = case_dice(self._predict(network, image), ref, labels=self.labels,
                                          regions=self.regions, ignore_label=self.ignore_label, scored=scored)
        finally:
            network.train(was_training)
        return out

    def __call__(self, network: nn.Module) -> list[float]:
        return mean_per_label(self.per_case(network), len(self.labels))


def mean_per_label(per_case: Mapping[str, Sequence[float]], num_labels: int) -> list[float]:
    """Per label: the mean over the cases where its Dice is defined (NaN when it is nowhere)."""
    table = np.array([list(v) for v in per_case.values()], dtype=float).reshape(-1, num_labels)
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(table)).sum(0)
        sums = np.nansum(table, 0)
    return [float(s / c) if c else float("nan") for s, c in zip(sums, counts)]


def full_validator(run: RunSpec) -> FullValidation | None:
    """The run's full-image validation, or None when ``full_val_every`` is 0 (nnU-Net's schedule). Partially
    annotated cases (``annotated_labels`` of the run's dataset.json) are scored on their drawn labels only."""
    if run.config.full_val_every == 0:
        return None
    spec = run.init_args.get("dataset_json")
    partial = DatasetSpec.from_json(spec).partial_labels if isinstance(spec, dict) else None
    annotated = None if partial is None else partial.scored
    regions = run.regions is not None
    labels = tuple(run.regions) if regions else tuple(range(1, run.num_heads))  # type: ignore[arg-type]
    return FullValidation(run.data_folder, tuple(run.val_ids or run.train_ids), run.patch_size, labels, regions,
                          run.ignore_label, run.device, run.precision, run.prev_stage_folder, run.cascade_labels,
                          annotated)
