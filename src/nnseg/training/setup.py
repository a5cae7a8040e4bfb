"""Resolve a fold's :class:`RunSpec` from the on-disk contract (plans, dataset.json, preprocessed data, splits)."""

from __future__ import annotations

import sys
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
from nnseg.training.config import TrainConfig
from nnseg.training.fold_state import TRAIN_CONFIG_FILE, check_saved_config
from nnseg.training.partial import partial_codes
from nnseg.training.preflight import (
    available_memory_bytes,
    check_dataset_complete,
    check_label_values,
    check_partial_cases,
    check_plans_plausible,
    check_pretrained_weights,
)
from nnseg.training.run_spec import RunSpec, architecture_for, check_component_names, pretrained_target
from nnseg.training.tasks import task_of
from nnseg.training.splits import check_splits_cases, fold_cases, load_or_create_splits, some_cases

__all__ = ["TRAIN_CONFIG_FILE", "FoldJob", "check_saved_config", "make_run_spec", "save_run_files"]


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


def make_run_spec(job: FoldJob, *, resume: bool = False, pretrained_weights: Path | None = None,
                  validate_only: bool = False) -> RunSpec:
    """Resolve and check the whole run before anything is written (see :mod:`nnseg.training.preflight`).

    ``splits_final.json`` is written (when missing) only after every check passed; ``validate_only`` (``--val``)
    skips the checks that only matter for training (label values, plans plausibility, weights).
    """
    check_component_names(job.config)
    cfg = job.plans.configuration(job.configuration_name)
    pre = Path(job.preprocessed_dataset_folder)
    data_folder = pre / cfg.data_identifier
    identifiers = list_cases(data_folder)
    fix = f"Rerun `nnUNetv2_preprocess -d {job.plans.dataset_name} -c {job.configuration_name}`"
    if not identifiers:
        raise FileNotFoundError(f"no preprocessed cases in {data_folder}; {fix} (or plan_and_preprocess) first")
    check_dataset_complete(identifiers, preprocessed_dataset_folder=pre, data_folder=data_folder, spec=job.spec, fix=fix)
    splits_file = pre / "splits_final.json"
    new_splits = not splits_file.is_file()
    splits = load_or_create_splits(splits_file, identifiers, save=False)
    unused = check_splits_cases(splits, splits_file, identifiers, data_folder, fix)
    if unused and job.fold != "all":
        print(f"note: {len(unused)} preprocessed case(s) are in no fold of {splits_file}: {some_cases(unused)}; if an "
              "earlier run wrote it from incomplete data, delete it to regenerate the splits", file=sys.stderr)
    cases = fold_cases(splits, job.fold, identifiers, splits_file=splits_file)
    out = fold_folder(job.results_dataset_folder, job.trainer_name, job.plans.plans_name, job.configuration_name, job.fold)
    check_saved_config(out, job.config, resume=resume)
    run = _run_spec(job, cases, data_folder, out)
    if not validate_only:
        _preflight(run, job, pretrained_weights)
    if new_splits:
        save_json(splits, splits_file)
    return run


def _preflight(run: RunSpec, job: FoldJob, pretrained_weights: Path | None) -> None:
    fix = f"rerun `nnUNetv2_preprocess -d {job.plans.dataset_name} -c {job.configuration_name}`"
    cases = sorted(set(run.train_ids + run.val_ids))
    check_partial_cases(job.spec, cases, data_folder=run.data_folder)
    shapes = check_label_values(run.data_folder, cases, job.spec, fix=fix)
    where = (f"plans {Path(job.preprocessed_dataset_folder) / (job.plans.plans_name + '.json')}, configuration "
             f"{job.configuration_name}")
    common = dict(architecture=run.architecture, input_channels=run.num_input_channels, num_heads=run.num_heads,
                  deep_supervision=run.config.deep_supervision)
    check_plans_plausible(patch_size=run.patch_size, batch_size=run.batch_size, image_shapes=shapes,
                          available=available_memory_bytes(run.device), where=where, **common)  # type: ignore[arg-type]
    if pretrained_weights is not None:
        target = pretrained_target(run, job.spec.to_json())
        check_pretrained_weights(Path(pretrained_weights), target=target, **common)  # type: ignore[arg-type]


def _run_spec(job: FoldJob, cases: dict[str, list[str]], data_folder: Path, out: Path) -> RunSpec:
    cfg = job.plans.configuration(job.configuration_name)
    seed = job.config.seed if job.config.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
    labels = label_setup(job.spec)
    prev = _prev_stage(job, cfg.previous_stage, cases["train"] + cases["val"])
    run = RunSpec(
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
        cascade_labels=tuple(job.spec.foreground_labels) if prev else (), partial=partial_codes(job.spec))
    task = task_of(job.config.task)
    return run if task is None else task.adapt_run(run)


def _prev_stage(job: FoldJob, previous_stage: str | None, identifiers: list[str]) -> Path | None:
    """A cascade's folder of previous-stage predictions (checked to hold every case), or None."""
    if not previous_stage:
        return None
    folder = prev_stage_folder(job.results_dataset_folder, job.trainer_name, job.plans.plans_name, previous_stage,
                               job.configuration_name)
    check_prev_stage_cases(folder, sorted(set(identifiers)), previous_stage=previous_stage)
    return folder


def save_run_files(run: RunSpec, job: FoldJob) -> None:
    """plans/dataset.json/fingerprint copies in the model folder (``train_config.json``: written by ``train``).

    A preset's own network (``config.network``) is written into the copied plans' architecture of the configuration,
    so prediction from the model folder builds that network.
    """
    model = run.output_folder.parent
    plans = job.plans.to_json()
    if run.config.network is not None:
        plans["configurations"][job.configuration_name]["architecture"] = run.architecture
    save_json(plans, model / "plans.json")
    save_json(job.spec.to_json(), model / "dataset.json")
    task = task_of(run.config.task)
    for name, content in ({} if task is None else task.model_files(run)).items():
        save_json(content, model / name)
    fingerprint = Path(job.preprocessed_dataset_folder) / "dataset_fingerprint.json"
    if fingerprint.is_file():
        save_json(load_json(fingerprint), model / "dataset_fingerprint.json", sort_keys=True)
