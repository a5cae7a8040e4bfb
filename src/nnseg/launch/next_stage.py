"""The lowres stage's gift to the cascade: ``predicted_next_stage/<next>/CASE.b2nd`` (reference §1.9, §1.13).

After a ``3d_lowres`` fold's final validation, nnU-Net resamples each validation case's logits to the shape of the
case in the next stage's preprocessed data (``3d_cascade_fullres`` uses the ``3d_fullres`` data), converts them to a
label map (argmax, or regions painted in ``regions_class_order``) and stores it as a ``(X, Y, Z)`` uint8 blosc2 array
``<model folder>/predicted_next_stage/<next>/CASE.b2nd``. The cascade trains on these (every case needs one, so all 5
lowres folds, or fold ``all``, must be trained first). As in nnU-Net, the logits are resampled with the lowres
configuration's ``resampling_fn_probabilities`` and its spacing on both sides (the separate-z decision looks at the
lowres spacing only). A case whose next-stage preprocessed data is missing is skipped with a message.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
import torch

from nnseg.jsonio import atomic_path
from nnseg.plans.schema import ConfigurationPlans, Plans
from nnseg.predictions.export.from_logits import (
    apply_inference_nonlin,
    probabilities_to_segmentation,
    resample_probabilities,
)
from nnseg.preprocessed.store import case_is_complete, load_case, open_b2nd
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.training.cascade import PREDICTED_NEXT_STAGE, prev_stage_file


@dataclass(frozen=True)
class NextStage:
    """One next stage: its name, its preprocessed data folder and where the lowres segmentations go."""

    name: str
    data_folder: Path
    output_folder: Path


def next_stages(plans: Plans, configuration: ConfigurationPlans, *, preprocessed_dataset_folder: Path,
                model_folder: Path) -> list[NextStage]:
    """The next stages of ``configuration`` (``next_stage`` may be one name or a list; none for most configurations)."""
    names = configuration.next_stage
    if not names:
        return []
    out = []
    for name in [names] if isinstance(names, str) else list(names):
        cfg = plans.configuration(name)
        out.append(NextStage(name, Path(preprocessed_dataset_folder) / cfg.data_identifier,
                             Path(model_folder) / PREDICTED_NEXT_STAGE / name))
    return out


def logits_to_next_stage(logits: torch.Tensor, target_shape: Sequence[int], *, configuration: ConfigurationPlans,
                         spec: DatasetSpec) -> np.ndarray:
    """Lowres logits ``(K, x, y, z)`` -> uint8 label map ``(X, Y, Z)`` of the next stage's preprocessed shape."""
    spacing = [float(s) for s in configuration.spacing]
    with torch.no_grad():
        resampled = resample_probabilities(logits.float(), target_shape, spacing, spacing, configuration=configuration)
        seg = probabilities_to_segmentation(apply_inference_nonlin(resampled, spec), spec)
    return np.ascontiguousarray(seg.cpu().numpy().astype(np.uint8))


def save_next_stage_seg(seg: np.ndarray, path: Path) -> None:
    """Write a ``(X, Y, Z)`` label map as a blosc2 ``.b2nd`` file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.unlink()
        blosc2.asarray(np.ascontiguousarray(seg), urlpath=str(tmp), mode="w")


def load_next_stage_seg(folder: Path, identifier: str) -> np.ndarray:
    """Read ``folder/CASE.b2nd`` (written by :func:`save_next_stage_seg` or by nnU-Net) as a numpy label map."""
    return np.asarray(open_b2nd(prev_stage_file(folder, identifier))[...])


class NextStageWriter:
    """An ``on_case`` callback for :func:`nnseg.launch.validate_cases.validate_fold` writing every next stage."""

    def __init__(self, stages: Sequence[NextStage], *, configuration: ConfigurationPlans, spec: DatasetSpec) -> None:
        self.stages, self.configuration, self.spec = list(stages), configuration, spec
        self.written: list[Path] = []

    def __call__(self, case: str, logits: torch.Tensor, properties: dict[str, Any]) -> None:
        for stage in self.stages:
            if not case_is_complete(stage.data_folder, case, with_seg=False):
                print(f"Predicting next stage {stage.name} failed for case {case} because the preprocessed file is "
                      f"missing in {stage.data_folder}! Run the preprocessing for this configuration first!",
                      file=sys.stderr)
                continue
            data, _, _ = load_case(stage.data_folder, case)
            seg = logits_to_next_stage(logits, data.shape[1:], configuration=self.configuration, spec=self.spec)
            path = prev_stage_file(stage.output_folder, case)
            save_next_stage_seg(seg, path)
            self.written.append(path)
