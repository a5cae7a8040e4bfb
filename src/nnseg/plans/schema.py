"""nnU-Net v2 ``plans.json`` as dataclasses whose JSON round-trip is exact.

A plans file (``nnUNet_preprocessed/DatasetXXX_Name/<plans_name>.json``, copied into every results folder) holds
the global decisions (transpose, reader, intensity statistics) and one dict per configuration (``2d``,
``3d_fullres``, ``3d_lowres``, ``3d_cascade_fullres`` and any user additions). :class:`Plans` keeps the
configurations as the raw dicts of the file (order and unknown keys kept, ``inherits_from`` not yet resolved);
:meth:`Plans.configuration` resolves inheritance like nnU-Net's ``PlansManager`` and returns a typed
:class:`ConfigurationPlans`. Loading and saving a file written by nnU-Net gives the same JSON text.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path, load_json, to_jsonable
from nnseg.plans.legacy import migrate_v1_architecture, needs_migration

__all__ = ["ConfigurationPlans", "Plans", "load_plans", "save_plans", "plans_to_text"]

# Keys of a configuration in the order nnU-Net writes them.
CONFIGURATION_KEYS = (
    "data_identifier", "preprocessor_name", "batch_size", "patch_size", "median_image_size_in_voxels", "spacing",
    "normalization_schemes", "use_mask_for_norm", "resampling_fn_data", "resampling_fn_seg",
    "resampling_fn_data_kwargs", "resampling_fn_seg_kwargs", "resampling_fn_probabilities",
    "resampling_fn_probabilities_kwargs", "architecture", "batch_dice", "next_stage", "previous_stage",
)
_REQUIRED_CONFIGURATION_KEYS = CONFIGURATION_KEYS[:-2]

# Top-level keys of a plans file in the order nnU-Net writes them.
PLANS_KEYS = (
    "dataset_name", "plans_name", "original_median_spacing_after_transp", "original_median_shape_after_transp",
    "image_reader_writer", "transpose_forward", "transpose_backward", "configurations", "experiment_planner_used",
    "label_manager", "foreground_intensity_properties_per_channel",
)
# Keys older or hand-written plans may lack (nnU-Net's PlansManager copes without them); None when absent.
_OPTIONAL_PLANS_KEYS = (
    "original_median_spacing_after_transp", "original_median_shape_after_transp", "experiment_planner_used",
    "label_manager", "foreground_intensity_properties_per_channel",
)
_LEGACY_INTENSITY_KEY = "foreground_intensity_properties_by_modality"


def _ordered(values: Mapping[str, Any], key_order: tuple[str, ...]) -> dict[str, Any]:
    """``values`` in ``key_order`` first (keys missing from ``values`` skipped), then the remaining keys."""
    out = {k: values[k] for k in key_order if k in values}
    out.update({k: v for k, v in values.items() if k not in out})
    return out


@dataclass(frozen=True)
class ConfigurationPlans:
    """One resolved configuration of a plans file (attributes named like its JSON keys).

    Attributes:
        data_identifier: name of the preprocessed-data folder (``<plans_name>_<configuration>``).
        preprocessor_name: e.g. ``DefaultPreprocessor``.
        batch_size: training batch size.
        patch_size: network input patch, one int per spatial axis (2 or 3 values, transposed axis order).
        median_image_size_in_voxels: median case shape after resampling to ``spacing`` (transposed).
        spacing: target spacing per spatial axis (transposed).
        normalization_schemes: one scheme class name per channel (``ZScoreNormalization``, ``CTNormalization``, ...).
        use_mask_for_norm: one bool per channel.
        resampling_fn_data / _seg / _probabilities: resampling function names (``resample_data_or_seg_to_shape``,
            ``resample_torch_fornnunet``) with their ``*_kwargs`` dicts.
        architecture: ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``.
        batch_dice: whether the Dice loss is computed over the whole batch.
        next_stage: name of the cascade's next configuration (``3d_lowres`` only), or None.
        previous_stage: configuration whose predictions this one needs (``3d_cascade_fullres``), or None.
        extra: every other key (``inherits_from``, user keys), in file order.
        name: the configuration's name in the plans file (not written to JSON).
        key_order: key order as read (used by :meth:`to_json`; not a JSON key).
    """

    data_identifier: str
    preprocessor_name: str
    batch_size: int
    patch_size: tuple[int, ...]
    median_image_size_in_voxels: tuple[float, ...]
    spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    resampling_fn_data: str
    resampling_fn_seg: str
    resampling_fn_data_kwargs: dict[str, Any]
    resampling_fn_seg_kwargs: dict[str, Any]
    resampling_fn_probabilities: str
    resampling_fn_probabilities_kwargs: dict[str, Any]
    architecture: dict[str, Any]
    batch_dice: bool
    next_stage: str | None = None
    previous_stage: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    key_order: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, name: str = "") -> "ConfigurationPlans":
        """Wrap a (resolved) configuration dict.

        Raises:
            ValueError: a required key is missing (the message names them and the configuration).
        """
        missing = [k for k in _REQUIRED_CONFIGURATION_KEYS if k not in d]
        if missing:
            raise ValueError(f"configuration {name!r} of the plans lacks {missing}; re-run planning "
                             "(nnUNetv2_plan_experiment) or add the keys to the plans file")
        d = copy.deepcopy(dict(d))
        tuples = ("patch_size", "median_image_size_in_voxels", "spacing", "normalization_schemes", "use_mask_for_norm")
        values = {k: (tuple(d[k]) if k in tuples else d[k]) for k in CONFIGURATION_KEYS if k in d}
        return cls(**values, extra={k: v for k, v in d.items() if k not in CONFIGURATION_KEYS},
                   name=name, key_order=tuple(d))

    def to_json(self) -> dict[str, Any]:
        """The configuration dict as nnU-Net writes it (lists, not tuples; key order as read)."""
        values: dict[str, Any] = {}
        for key in CONFIGURATION_KEYS:
            value = getattr(self, key)
            if key in ("next_stage", "previous_stage") and value is None:
                continue
            values[key] = copy.deepcopy(value)
        values.update(copy.deepcopy(self.extra))
        return to_jsonable(_ordered(values, self.key_order))

    @property
    def ndim(self) -> int:
        """Number of spatial axes the network works on (2 or 3)."""
        return len(self.patch_size)

    @property
    def network_class_name(self) -> str:
        return str(self.architecture["network_class_name"])

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return dict(self.architecture["arch_kwargs"])

    @property
    def strides(self) -> list[list[int]]:
        """Pooling strides per stage (nnU-Net's ``pool_op_kernel_sizes``)."""
        return [list(s) for s in self.architecture["arch_kwargs"]["strides"]]

    @property
    def kernel_sizes(self) -> list[list[int]]:
        """Convolution kernel sizes per stage (nnU-Net's ``conv_kernel_sizes``)."""
        return [list(s) for s in self.architecture["arch_kwargs"]["kernel_sizes"]]


@dataclass(frozen=True)
class Plans:
    """A whole plans file.

    Attributes:
        dataset_name: e.g. ``Dataset004_Hippocampus``.
        plans_name: plans identifier (``nnUNetPlans``, ``nnUNetResEncUNetLPlans``, ...).
        original_median_spacing_after_transp: median spacing of the raw cases (transposed), floats.
        original_median_shape_after_transp: median shape after cropping (transposed), ints.
        image_reader_writer: reader class name (``SimpleITKIO``, ``NaturalImage2DIO``, ...).
        transpose_forward / transpose_backward: axis permutation applied before / undone after the network.
        configurations: configuration name -> raw dict, file order, inheritance unresolved.
        experiment_planner_used: planner class name.
        label_manager: label manager class name (``LabelManager``; None when the file has none, which means the same).
        foreground_intensity_properties_per_channel: channel index (str) -> intensity statistics (read from the
            legacy key ``foreground_intensity_properties_by_modality`` when only that exists).
        The ``original_median_*``, ``experiment_planner_used``, ``label_manager`` and intensity entries are None when
        the file lacks them (and are then not written back).
        extra: unknown top-level keys, kept on write.
        key_order: top-level key order as read (not a JSON key).
    """

    dataset_name: str
    plans_name: str
    original_median_spacing_after_transp: list[float] | None
    original_median_shape_after_transp: list[int] | None
    image_reader_writer: str
    transpose_forward: list[int]
    transpose_backward: list[int]
    configurations: dict[str, dict[str, Any]]
    experiment_planner_used: str | None
    label_manager: str | None
    foreground_intensity_properties_per_channel: dict[str, dict[str, float]] | None
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, source: PathLike | None = None) -> "Plans":
        """Wrap a plans dict (deep-copied).

        Raises:
            ValueError: a required top-level key is missing or ``configurations`` is not a dict.
        """
        where = str(source) if source is not None else "plans"
        missing = [k for k in PLANS_KEYS if k not in d and k not in _OPTIONAL_PLANS_KEYS]
        if missing:
            raise ValueError(f"{where} lacks the keys {missing}; it is not an nnU-Net v2 plans file "
                             "(re-run nnUNetv2_plan_experiment to regenerate it)")
        if not isinstance(d["configurations"], Mapping):
            raise ValueError(f"{where}: 'configurations' is {type(d['configurations']).__name__}, expected a dict "
                             "of configuration name -> settings")
        d = copy.deepcopy(dict(d))
        values = {k: d.get(k) for k in PLANS_KEYS}
        if values["foreground_intensity_properties_per_channel"] is None:
            values["foreground_intensity_properties_per_channel"] = copy.deepcopy(d.get(_LEGACY_INTENSITY_KEY))
        values["configurations"] = {str(k): dict(v) for k, v in d["configurations"].items()}
        return cls(**values, extra={k: v for k, v in d.items() if k not in PLANS_KEYS}, key_order=tuple(d))

    def to_json(self) -> dict[str, Any]:
        """The plans dict as nnU-Net writes it (key order as read; canonical order for new plans)."""
        values = {k: copy.deepcopy(getattr(self, k)) for k in PLANS_KEYS if not self._absent(k)}
        values.update(copy.deepcopy(self.extra))
        return to_jsonable(_ordered(values, self.key_order))

    def _absent(self, key: str) -> bool:
        """An optional key that the file did not have (so it is not written back)."""
        if key not in _OPTIONAL_PLANS_KEYS:
            return False
        return getattr(self, key) is None or (bool(self.key_order) and key not in self.key_order)

    @property
    def available_configurations(self) -> list[str]:
        """Configuration names in file order."""
        return list(self.configurations)

    def planner_may_omit(self, name: str) -> bool:
        """Whether ``name`` is a configuration nnU-Net's planner leaves out when it is not needed: ``3d_lowres`` (made
        only for images much larger than the patch) and its ``3d_cascade_fullres``, and every 3D configuration of a
        dataset of 2D images (one slice). Any other absent name is a mistake (a typo, the wrong plans)."""
        if name in ("3d_lowres", "3d_cascade_fullres"):
            return True
        if name != "3d_fullres":
            return False
        shape = self.original_median_shape_after_transp
        return int(shape[0]) == 1 if shape else not any(c.startswith("3d") for c in self.configurations)

    def resolved_configuration_dict(self, name: str) -> dict[str, Any]:
        """The configuration's dict with ``inherits_from`` chains merged (child keys win; ``inherits_from`` kept).

        Raises:
            ValueError: unknown configuration (the available ones are listed), or an inheritance cycle.
        """
        chain: list[str] = []
        current = name
        while True:
            if current not in self.configurations:
                where = f" (inherited by {chain[-1]!r})" if chain else ""
                raise ValueError(f"configuration {current!r}{where} is not in plans {self.plans_name!r} of "
                                 f"{self.dataset_name}; available: {self.available_configurations}")
            if current in chain:
                raise ValueError(f"configurations {chain + [current]} inherit from each other in a cycle; fix "
                                 f"'inherits_from' in the plans file {self.plans_name}.json")
            chain.append(current)
            parent = self.configurations[current].get("inherits_from")
            if parent is None:
                break
            current = str(parent)
        merged: dict[str, Any] = {}
        for cfg in reversed(chain):
            merged.update(copy.deepcopy(self.configurations[cfg]))
        return merged

    def configuration(self, name: str) -> ConfigurationPlans:
        """The named configuration with inheritance resolved (like nnU-Net's ``PlansManager.get_configuration``).

        Configurations in nnU-Net's old flat format (before ``architecture`` existed) are converted on the fly
        (:func:`nnseg.plans.legacy.migrate_v1_architecture`); the plans themselves are not changed.

        Raises:
            ValueError: unknown configuration (the available ones are listed) or incomplete settings.
        """
        resolved = self.resolved_configuration_dict(name)
        if needs_migration(resolved):
            resolved = migrate_v1_architecture(resolved, name=name)
        return ConfigurationPlans.from_json(resolved, name=name)



def plans_to_text(plans: Plans | Mapping[str, Any]) -> str:
    """The JSON text nnU-Net writes for a plans dict (``indent=4``, keys unsorted)."""
    d = plans.to_json() if isinstance(plans, Plans) else to_jsonable(dict(plans))
    return json.dumps(d, indent=4, sort_keys=False)


def load_plans(path: PathLike) -> Plans:
    """Read a plans file.

    Raises:
        FileNotFoundError: the file does not exist (the message says how to create it).
        ValueError: not valid JSON or not a plans file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plans file {path} does not exist; run nnUNetv2_plan_and_preprocess (or "
                                "nnUNetv2_plan_experiment) for this dataset first, or check the -p plans name")
    return Plans.from_json(load_json(path), source=path)


def save_plans(plans: Plans, path: PathLike) -> None:
    """Write a plans file atomically with nnU-Net's formatting (``indent=4``, keys unsorted)."""
    text = plans_to_text(plans)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
