"""Resolve a fold's :class:`RunSpec` from the on-disk contract (plans, dataset.json, preprocessed data, splits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg.jsonio import load_json, save_json
from nnseg.plans.schema import Plans
from nnseg.preprocessed.store import list_cases
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.training.cascade import check_prev_stage_cases, prev_stage_folder
from nnseg.training.config import TrainConfig, config_differences
from nnseg.training.run_spec import RunSpec, architecture_for, check_component_names
from nnseg.training.splits import fold_cases, load_or_create_splits

TRAIN_CONFIG_FILE = "train_config.json"


@dataclass(frozen=True)
class FoldJob:
    """What the user asked for: dataset folders, configuration, fold, trainer name and the TrainConfig."""

    plans: Plans
    configuration_name: str
    spec: DatasetSpec
    preprocessed_dataset_folder: Path
    results_dataset_folder: Path
    fold: int | str
    trainer_name: str
    config: TrainConfig
    device: torch.device
    precision: str
    background: bool = True
    disable_checkpointing: bool = False


def model_folder(results_dataset_folder: Path, trainer: str, plans_name: str, configuration: str) -> Path:
    """``<results>/DatasetX/<Trainer>__<Plans>__<configuration>`` (nnU-Net's layout)."""
    return Path(results_dataset_folder) / f"{trainer}__{plans_name}__{configuration}"


def fold_folder(results_dataset_folder: Path, trainer: str, plans_name: str, configuration: str, fold: int | str) -> Path:
    return model_folder(results_dataset_folder, trainer, plans_name, configuration) / f"fold_{fold}"


def label_setup(spec: DatasetSpec) -> dict[str, Any]:
    """Heads, regions, ignore label and the annotated-voxels key of class_locations."""
    ignore = spec.ignore_label
    regions = None
    if spec.has_regions:
        regions = tuple(tuple(int(v) for v in r) if isinstance(r, (tuple, list)) else (int(r),)
                        for r in spec.foreground_regions)
    heads = len(regions) if regions is not None else len(spec.all_labels)
    annotated = tuple([-1, *spec.all_labels]) if ignore is not None else None
    return {"regions": regions, "ignore_label": ignore, "num_heads": heads, "annotated_key": annotated}


def check_saved_config(folder: Path, config: TrainConfig, *, resume: bool) -> None:
    """Refuse to continue or overwrite a fold that was trained with other settings (naming the differences)."""
    path = folder / TRAIN_CONFIG_FILE
    if not path.is_file():
        return
    saved = TrainConfig.from_json(load_json(path))
    diffs = config_differences(saved, config)
    if diffs:
        action = "continue (--c)" if resume else "overwrite"
        raise ValueError(f"{folder} was trained with other settings; refusing to {action} it. Differences: "
                         f"{'; '.join(diffs)}. Use the same settings, or another fold/trainer name, or delete the folder")


def make_run_spec(job: FoldJob, *, resume: bool = False) -> RunSpec:
    check_component_names(job.config)
    cfg = job.plans.configuration(job.configuration_name)
    data_folder = Path(job.preprocessed_dataset_folder) / cfg.data_identifier
    identifiers = list_cases(data_folder)
    if not identifiers:
        raise FileNotFoundError(f"no preprocessed cases in {data_folder}; run `nnUNetv2_preprocess -d "
                                f"{job.plans.dataset_name} -c {job.configuration_name}` (or plan_and_preprocess) first")
    splits = load_or_create_splits(Path(job.preprocessed_dataset_folder) / "splits_final.json", identifiers)
    cases = fold_cases(splits, job.fold, identifiers)
    missing = sorted(set(cases["train"] + cases["val"]) - set(identifiers))
    if missing:
        raise ValueError(f"splits_final.json names cases that are not preprocessed in {data_folder}: {missing[:5]}...; "
                         "delete splits_final.json or preprocess them")
    out = fold_folder(job.results_dataset_folder, job.trainer_name, job.plans.plans_name, job.configuration_name, job.fold)
    check_saved_config(out, job.config, resume=resume)
    seed = job.config.seed if job.config.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
    labels = label_setup(job.spec)
    prev = _prev_stage(job, cfg.previous_stage, cases["train"] + cases["val"])
    return RunSpec(
        architecture=architecture_for(job.config, dict(cfg.architecture)), patch_size=tuple(int(p) for p in cfg.patch_size),
        batch_size=int(job.config.batch_size or cfg.batch_size), batch_dice=bool(cfg.batch_dice),
        num_input_channels=job.spec.num_channels + (len(job.spec.foreground_labels) if prev else 0),
        num_heads=labels["num_heads"], regions=labels["regions"],
        ignore_label=labels["ignore_label"], annotated_key=labels["annotated_key"],
        mask_channels=tuple(i for i, m in enumerate(cfg.use_mask_for_norm) if m), data_folder=data_folder,
        output_folder=out, train_ids=tuple(cases["train"]), val_ids=tuple(cases["val"]), trainer_name=job.trainer_name,
        init_args={"plans": job.plans.to_json(), "configuration": job.configuration_name, "fold": job.fold,
                   "dataset_json": job.spec.to_json(), "device": job.device},
        config=job.config, device=job.device, precision=job.precision, seed=seed, background=job.background,
        disable_checkpointing=job.disable_checkpointing, prev_stage_folder=prev,
        cascade_labels=tuple(job.spec.foreground_labels) if prev else ())


def _prev_stage(job: FoldJob, previous_stage: str | None, identifiers: list[str]) -> Path | None:
    """A cascade's folder of previous-stage predictions (checked to hold every case), or None."""
    if not previous_stage:
        return None
    folder = prev_stage_folder(job.results_dataset_folder, job.trainer_name, job.plans.plans_name, previous_stage,
                               job.configuration_name)
    check_prev_stage_cases(folder, sorted(set(identifiers)), previous_stage=previous_stage)
    return folder


def save_run_files(run: RunSpec, job: FoldJob) -> None:
    """``train_config.json`` in the fold folder; plans/dataset.json/fingerprint copies in the model folder.

    A preset's own network (``config.network``) is written into the copied plans' architecture of the configuration,
    so prediction from the model folder builds that network.
    """
    save_json(run.config.to_json(), run.output_folder / TRAIN_CONFIG_FILE)
    model = run.output_folder.parent
    plans = job.plans.to_json()
    if run.config.network is not None:
        plans["configurations"][job.configuration_name]["architecture"] = run.architecture
    save_json(plans, model / "plans.json")
    save_json(job.spec.to_json(), model / "dataset.json")
    fingerprint = Path(job.preprocessed_dataset_folder) / "dataset_fingerprint.json"
    if fingerprint.is_file():
        save_json(load_json(fingerprint), model / "dataset_fingerprint.json", sort_keys=True)
