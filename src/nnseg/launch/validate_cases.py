"""A fold's final validation: predict its preprocessed validation cases and export them like ``nnUNetv2_predict``.

Training calls this after the last epoch (nnU-Net's ``perform_actual_validation``); ``--val`` / ``--val_best`` call it
on an existing checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg.predictions.export.from_logits import export_prediction
from nnseg.predictions.run.predict import Predictor
from nnseg.preprocessed.store import load_case, open_b2nd
from nnseg.training.cascade import onehot_numpy, prev_stage_file


def prev_stage_onehot(folder: Path, case: str, foreground_labels: Sequence[int]) -> np.ndarray:
    """float32 ``(len(foreground_labels), X, Y, Z)`` one-hot of ``folder/CASE.b2nd`` (cascade validation input)."""
    path = prev_stage_file(folder, case)
    if not path.is_file():
        raise FileNotFoundError(f"previous-stage segmentation {path} is missing; train every fold of the previous stage first")
    return onehot_numpy(np.asarray(open_b2nd(path)[...]), foreground_labels)


def validate_fold(model_folder: Path, fold: int | str, data_folder: Path, case_ids: Sequence[str], output_folder: Path, *,
                  checkpoint: str = "checkpoint_final.pth", device: torch.device | str = "cpu",
                  precision: str | None = None, save_probabilities: bool = False, use_tta: bool = True,
                  progress: bool = False, prev_stage_folder: Path | None = None,
                  on_case: Callable[[str, torch.Tensor, dict[str, Any]], None] | None = None) -> float:
    """Predict ``case_ids`` from ``data_folder`` with fold ``fold``'s ``checkpoint`` into ``output_folder``.

    A cascade stage appends the one-hot previous-stage segmentation from ``prev_stage_folder/CASE.b2nd``;
    ``on_case(case, logits, properties)`` sees every case's logits (the lowres stage writes ``predicted_next_stage``).

    Returns:
        Wall time in seconds.
    """
    start = time.perf_counter()
    predictor = Predictor.from_model_folder(model_folder, folds=[fold], checkpoint=checkpoint, device=device,
                                            precision=precision, use_tta=use_tta)
    model = predictor.model
    output_folder.mkdir(parents=True, exist_ok=True)
    cases: Sequence[str] = case_ids
    if progress:
        from tqdm import tqdm

        cases = tqdm(case_ids, desc="validation", leave=False)
    for case in cases:
        data, _, props = load_case(data_folder, case)
        props.pop("class_locations", None)
        data = np.asarray(data[...])
        if prev_stage_folder is not None:
            data = np.concatenate([data, prev_stage_onehot(prev_stage_folder, case, model.spec.foreground_labels)])
        logits = predictor.predict_logits(data)
        if on_case is not None:
            on_case(case, logits, props)
        export_prediction(logits, props, output_folder / case, plans=model.plans, configuration=model.configuration,
                          spec=model.spec, save_probabilities=save_probabilities)
    return time.perf_counter() - start
