"""Transfer a plans file to another dataset (nnU-Net's ``move_plans_between_datasets``, used for pretraining).

The plans keep every planned value (patch size, spacing, network, normalisation statistics); only the names that
tie them to a dataset change: ``dataset_name``, ``plans_name``, the ``data_identifier`` prefix of each configuration,
and ``image_reader_writer`` (re-detected on the target dataset's files).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnseg.plans.schema import Plans, load_plans, save_plans


def rename_plans(plans: Plans | Mapping[str, Any], *, target_dataset_name: str, target_plans_name: str,
                 image_reader_writer: str | None = None) -> Plans:
    """The plans with dataset name, plans name and data identifiers rewritten for the target dataset.

    A ``data_identifier`` that starts with the source plans name gets the target plans name as prefix instead.

    Args:
        plans: the source plans.
        target_dataset_name: e.g. ``Dataset005_Prostate``.
        target_plans_name: the new plans identifier (file ``<target_plans_name>.json``).
        image_reader_writer: reader class name for the target's files (None keeps the source's).
    """
    d = copy.deepcopy(plans.to_json() if isinstance(plans, Plans) else dict(plans))
    source_name = str(d.get("plans_name", ""))
    d["dataset_name"] = target_dataset_name
    d["plans_name"] = target_plans_name
    for configuration in d.get("configurations", {}).values():
        identifier = configuration.get("data_identifier")
        # identifiers that do not start with the plans name (ResEnc plans share nnUNetPlans_2d data) stay as they are
        if isinstance(identifier, str) and source_name and identifier.startswith(source_name):
            configuration["data_identifier"] = target_plans_name + identifier[len(source_name):]
    if image_reader_writer is not None:
        d["image_reader_writer"] = image_reader_writer
    return Plans.from_json(d)


def move_plans_between_datasets(source_plans_file: Path, target_raw_dataset_folder: Path, target_plans_file: Path, *,
                                target_dataset_name: str) -> Plans:
    """Read plans, rewrite them for the target dataset (reader chosen on one of its training images) and save them.

    Args:
        source_plans_file: ``nnUNet_preprocessed/<source>/<source_plans>.json``.
        target_raw_dataset_folder: ``nnUNet_raw/<target>`` (its dataset.json and an image select the reader).
        target_plans_file: ``nnUNet_preprocessed/<target>/<target_plans>.json``; the file name (without ``.json``)
            becomes the plans name.
        target_dataset_name: the target's folder name.

    Raises:
        FileNotFoundError: the source plans or the target's dataset.json are missing.
        ValueError: the target's channel count differs from what the plans were made for.
    """
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.discover import training_cases
    from nnseg.raw.image_io import determine_io

    source = load_plans(source_plans_file)
    spec = load_dataset_json(Path(target_raw_dataset_folder) / "dataset.json")
    _check_channels(source, spec.num_channels, source_plans_file, Path(target_raw_dataset_folder))
    cases = training_cases(Path(target_raw_dataset_folder), spec)
    example = cases[0].images[0] if cases else None
    io = determine_io(spec.file_ending, example, overwrite=spec.overwrite_image_reader_writer)
    target_plans_file = Path(target_plans_file)
    moved = rename_plans(source, target_dataset_name=target_dataset_name,
                         target_plans_name=target_plans_file.name.removesuffix(".json"), image_reader_writer=io.name)
    save_plans(moved, target_plans_file)
    return moved


def _check_channels(plans: Plans, num_channels: int, plans_file: Path, target: Path) -> None:
    intensity = plans.foreground_intensity_properties_per_channel or {}
    for name in plans.available_configurations:
        schemes = plans.configuration(name).normalization_schemes
        if schemes and len(schemes) != num_channels:
            raise ValueError(f"{plans_file} was planned for {len(schemes)} input channel(s) but {target} has "
                             f"{num_channels}; plans can only be moved between datasets with the same channels")
    if intensity and len(intensity) != num_channels:
        raise ValueError(f"{plans_file} holds intensity statistics for {len(intensity)} channel(s) but {target} has "
                         f"{num_channels}; plans can only be moved between datasets with the same channels")
