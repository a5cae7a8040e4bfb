"""A fold's final validation: predict its preprocessed validation cases and export them like ``nnUNetv2_predict``.

Training calls this after the last epoch (nnU-Net's ``perform_actual_validation``); ``--val`` / ``--val_best`` call it
on an existing checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nnseg.predictions.export import export_prediction
from nnseg.predictions.predict import Predictor
from nnseg.preprocessed.store import load_case


def validate_fold(model_folder: Path, fold: int | str, data_folder: Path, case_ids: Sequence[str], output_folder: Path, *,
                  checkpoint: str = "checkpoint_final.pth", device: torch.device | str = "cpu",
                  precision: str | None = None, save_probabilities: bool = False, use_tta: bool = True,
                  progress: bool = False) -> float:
    """Predict ``case_ids`` from ``data_folder`` with fold ``fold``'s ``checkpoint`` into ``output_folder``.

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
        logits = predictor.predict_logits(np.asarray(data[...]))
        export_prediction(logits, props, output_folder / case, plans=model.plans, configuration=model.configuration,
                          spec=model.spec, save_probabilities=save_probabilities)
    return time.perf_counter() - start
