"""Transfer a plans file to another dataset (nnU-Net's ``move_plans_between_datasets``, used for pretraining).

The plans keep every planned value (patch size, spacing, network, normalisation statistics); only the names that
tie them to a dataset change: ``dataset_name``, ``plans_name``, the ``data_identifier`` prefix of each configuration,
and ``image_reader_writer`` (re-detected on the target dataset's files).

Across channel counts (nnU-Net refuses these) the network topology, patch and
spacing still come from the source, while the per-channel normalisation (``normalization_schemes``,
``use_mask_for_norm``, ``foreground_intensity_properties_per_channel``) comes from the target's own
``dataset_fingerprint.json`` and channel names, as nnU-Net's planner would choose them. Label sets may differ freely:
plans do not hold labels (the heads are sized from ``dataset.json`` when training).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnseg.jsonio import load_json
from nnseg.plans.schema import Plans, load_plans, save_plans
from nnseg.plans.spacing import normalization_schemes


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
        ValueError: the target's channels differ from the plans' and the target has no fingerprint yet.
    """
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.discover import training_cases
    from nnseg.raw.image_io import determine_io

    source = load_plans(source_plans_file)
    spec = load_dataset_json(Path(target_raw_dataset_folder) / "dataset.json")
    target_plans_file = Path(target_plans_file)
    if not _same_channels(source, spec.num_channels):
        source = target_normalisation(source, channel_names=spec.channel_names,
                                      fingerprint_file=target_plans_file.parent / "dataset_fingerprint.json",
                                      plans_file=Path(source_plans_file), target_dataset_name=target_dataset_name)
    cases = training_cases(Path(target_raw_dataset_folder), spec)
    example = cases[0].images[0] if cases else None
    io = determine_io(spec.file_ending, example, overwrite=spec.overwrite_image_reader_writer)
    moved = rename_plans(source, target_dataset_name=target_dataset_name,
                         target_plans_name=target_plans_file.name.removesuffix(".json"), image_reader_writer=io.name)
    save_plans(moved, target_plans_file)
    return moved


def _same_channels(plans: Plans, num_channels: int) -> bool:
    """The plans were made for ``num_channels`` input channels (their normalisation is kept, as nnU-Net does)."""
    intensity = plans.foreground_intensity_properties_per_channel or {}
    if intensity and len(intensity) != num_channels:
        return False
    return all(not plans.configuration(name).normalization_schemes
               or len(plans.configuration(name).normalization_schemes) == num_channels
               for name in plans.available_configurations)


def target_normalisation(plans: Plans, *, channel_names: Mapping[str, str], fingerprint_file: Path, plans_file: Path,
                         target_dataset_name: str) -> Plans:
    """The plans with each configuration's per-channel normalisation chosen for the target's channels and
    intensities (its fingerprint), everything else as planned for the source.

    Raises:
        FileNotFoundError: the target has no ``dataset_fingerprint.json`` yet (the message says how to make it).
    """
    if not fingerprint_file.is_file():
        raise FileNotFoundError(
            f"{plans_file} was planned for other input channels than {target_dataset_name}'s {dict(channel_names)}; "
            f"moving plans across channels takes the normalisation from the target's fingerprint, and "
            f"{fingerprint_file} does not exist. Run `nnUNetv2_extract_fingerprint -d {target_dataset_name}` first")
    fingerprint = load_json(fingerprint_file)
    schemes, use_mask = normalization_schemes(channel_names,
                                              float(fingerprint["median_relative_size_after_cropping"]))
    d = copy.deepcopy(plans.to_json())
    for configuration in d.get("configurations", {}).values():
        if "normalization_schemes" in configuration or "inherits_from" not in configuration:
            configuration["normalization_schemes"] = list(schemes)
            configuration["use_mask_for_norm"] = list(use_mask)
    intensity = fingerprint["foreground_intensity_properties_per_channel"]
    d["foreground_intensity_properties_per_channel"] = {k: dict(sorted(v.items())) for k, v in intensity.items()}
    return Plans.from_json(d)
