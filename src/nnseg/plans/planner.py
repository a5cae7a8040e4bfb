"""Experiment planning: fingerprint + ``dataset.json`` -> :class:`~nnseg.plans.schema.Plans` (nnU-Net's rules).

:func:`plan_experiment` is pure (no file I/O). It picks the 3d_fullres target spacing (median, anisotropy rule),
transposes the coarsest axis first, plans ``3d_fullres`` (3D data only), searches a ``3d_lowres`` configuration when
the fullres patch covers less than a quarter of the median image (spacing grown in steps of 3 %, dropped when it
does not at least halve the voxel count) with the ``3d_cascade_fullres`` entry, and plans ``2d`` from the same
spacing without its first axis. The planner is chosen by nnU-Net class name from :data:`PLANNERS`.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from nnseg.jsonio import to_jsonable
from nnseg.plans.configuration import PlanningContext, plan_configuration
from nnseg.plans.presets import PLANNERS, PlannerPreset
from nnseg.plans.schema import Plans
from nnseg.plans.spacing import compute_new_shape, fullres_target_spacing, normalization_schemes, transpose_axes

__all__ = ["PLANNERS", "PlannerPreset", "merge_existing_configurations", "plan_experiment"]

_FINGERPRINT_KEYS = ("spacings", "shapes_after_crop", "median_relative_size_after_cropping",
                     "foreground_intensity_properties_per_channel")
_LOWRES_SPACING_STEP = 1.03
_MAX_LOWRES_STEPS = 10_000


def _as_dict(obj: Any, what: str) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_json"):
        return dict(obj.to_json())
    raise TypeError(f"{what} must be a dict or have .to_json(), got {type(obj).__name__}")


def _fingerprint(fingerprint: Any) -> dict[str, Any]:
    fp = _as_dict(fingerprint, "fingerprint")
    missing = [k for k in _FINGERPRINT_KEYS if k not in fp]
    if missing:
        raise ValueError(f"the dataset fingerprint lacks {missing}; re-run nnUNetv2_extract_fingerprint "
                         "(dataset_fingerprint.json)")
    if not fp["spacings"] or len(fp["spacings"]) != len(fp["shapes_after_crop"]):
        raise ValueError(f"the fingerprint has {len(fp['spacings'])} spacings and {len(fp['shapes_after_crop'])} "
                         "shapes; both must list every training case. Re-run nnUNetv2_extract_fingerprint")
    return fp


def _spec(spec: Any) -> dict[str, Any]:
    d = _as_dict(spec, "spec (dataset.json)")
    if "channel_names" not in d and "modality" in d:
        d["channel_names"] = d["modality"]
    missing = [k for k in ("channel_names", "labels", "numTraining") if k not in d]
    if missing:
        raise ValueError(f"dataset.json lacks {missing}; add them (see nnU-Net's dataset_format documentation)")
    return d


def _sorted_json(obj: Any) -> Any:
    """``obj`` with dict keys sorted recursively (how the fingerprint reads back from its sort_keys JSON file)."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def _preset(planner: str | PlannerPreset, gpu_memory_target_gb: float | None) -> tuple[PlannerPreset, float]:
    preset = planner if isinstance(planner, PlannerPreset) else PLANNERS[planner]
    target = preset.gpu_memory_target_gb if gpu_memory_target_gb is None else float(gpu_memory_target_gb)
    if target <= 0:
        raise ValueError(f"gpu_memory_target_gb must be > 0, got {gpu_memory_target_gb}")
    if preset.warn_other_gpu_target and target != preset.gpu_memory_target_gb:
        warnings.warn(f"planner {preset.name} is meant for {preset.gpu_memory_target_gb:g} GB, got {target:g} GB; "
                      "only intended if you changed it on purpose (then also set a new plans name)",
                      UserWarning, stacklevel=3)
    return preset, target


def _plan_lowres(ctx: PlanningContext, fullres: dict[str, Any], median_shape: np.ndarray, num_training: int,
                 identifier: str) -> dict[str, Any] | None:
    """nnU-Net's 3d_lowres search: grow the spacing by 3 % steps until the patch covers a quarter of the image."""
    fullres_spacing = np.asarray(fullres["spacing"], dtype=np.float64)
    spacing = fullres_spacing.copy()
    median_voxels = float(np.prod(median_shape, dtype=np.float64))
    patch_voxels = float(np.prod(fullres["patch_size"], dtype=np.float64))
    lowres = None
    for _ in range(_MAX_LOWRES_STEPS):
        if patch_voxels / median_voxels >= ctx.preset.lowres_creation_threshold:
            break
        coarse = spacing.max() / spacing > 2
        if np.any(coarse):
            spacing[coarse] *= _LOWRES_SPACING_STEP
        else:
            spacing *= _LOWRES_SPACING_STEP
        shape = fullres_spacing / spacing * median_shape
        median_voxels = float(np.prod(shape, dtype=np.float64))
        lowres = plan_configuration(ctx, spacing.copy(), [round(float(s)) for s in shape],
                                    data_identifier=identifier, n_voxels_dataset=median_voxels * num_training)
        patch_voxels = float(np.prod(lowres["patch_size"], dtype=np.float64))
    else:
        raise ValueError(f"no 3d_lowres configuration found after {_MAX_LOWRES_STEPS} spacing steps (spacing "
                         f"{spacing.tolist()}); check the fingerprint's spacings and shapes")
    if lowres is not None and float(np.prod(median_shape, dtype=np.float64)) / median_voxels < 2:
        return None
    return lowres


def _plan_3d(ctx: PlanningContext, spacing: np.ndarray, median_shape: np.ndarray, n_voxels: float,
             num_training: int, ident: Any) -> dict[str, dict[str, Any]]:
    fullres = plan_configuration(ctx, spacing, median_shape, data_identifier=ident("3d_fullres"),
                                 n_voxels_dataset=n_voxels)
    lowres = _plan_lowres(ctx, fullres, median_shape, num_training, ident("3d_lowres"))
    fullres["batch_dice"] = lowres is not None
    if lowres is None:
        return {"3d_fullres": fullres}
    lowres["batch_dice"] = False
    lowres["next_stage"] = "3d_cascade_fullres"
    return {"3d_lowres": lowres, "3d_fullres": fullres,
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}


def _context(preset: PlannerPreset, target: float, fp: dict[str, Any], spec: dict[str, Any],
             preprocessor_name: str) -> PlanningContext:
    schemes, use_mask = normalization_schemes(spec["channel_names"], float(fp["median_relative_size_after_cropping"]))
    return PlanningContext(preset=preset, num_input_channels=len(spec["channel_names"]),
                           num_classes=len(spec["labels"]), normalization_schemes=schemes,
                           use_mask_for_norm=use_mask, gpu_memory_target_gb=target,
                           preprocessor_name=preprocessor_name)


def plan_experiment(fingerprint: Any, spec: Any, *, dataset_name: str, image_reader_writer: str,
                    planner: str | PlannerPreset = "ExperimentPlanner", gpu_memory_target_gb: float | None = None,
                    overwrite_target_spacing: Sequence[float] | None = None, overwrite_plans_name: str | None = None,
                    preprocessor_name: str = "DefaultPreprocessor") -> Plans:
    """Plan every configuration of a dataset, as nnU-Net v2's experiment planners do.

    Args:
        fingerprint: ``dataset_fingerprint.json`` as a dict, or an object with ``to_json()`` (``Fingerprint``).
        spec: ``dataset.json`` as a dict, or a ``DatasetSpec``.
        dataset_name: e.g. ``Dataset004_Hippocampus``.
        image_reader_writer: reader class name to record (``SimpleITKIO``, ...).
        planner: nnU-Net planner class name (``ExperimentPlanner``, ``nnUNetPlannerResEncL``, ...) or a preset.
        gpu_memory_target_gb: GPU memory to plan for (default: the planner's, 8/24/40 GB).
        overwrite_target_spacing: 3d_fullres target spacing (untransposed) replacing the median rule.
        overwrite_plans_name: plans identifier replacing the planner's default.
        preprocessor_name: written to every configuration.

    Returns:
        The plans (configurations ``2d``, and for 3D data ``3d_fullres`` plus possibly ``3d_lowres`` and
        ``3d_cascade_fullres``).
    """
    preset, target = _preset(planner, gpu_memory_target_gb)
    fp, sp = _fingerprint(fingerprint), _spec(spec)
    plans_name = overwrite_plans_name or preset.plans_name
    ctx = _context(preset, target, fp, sp, preprocessor_name)
    spacing = fullres_target_spacing(fp["spacings"], fp["shapes_after_crop"], overwrite=overwrite_target_spacing)
    forward, backward = transpose_axes(spacing)
    new_shapes = [compute_new_shape(shape, s, spacing) for s, shape in zip(fp["spacings"], fp["shapes_after_crop"])]
    median_t = np.median(np.vstack(new_shapes), axis=0)[forward]
    spacing_t = spacing[forward]
    n_voxels = float(np.prod(median_t, dtype=np.float64) * int(sp["numTraining"]))

    def ident(cfg: str) -> str:
        return preset.data_identifier(plans_name, cfg)

    plan_2d = plan_configuration(ctx, spacing_t[1:], median_t[1:], data_identifier=ident("2d"),
                                 n_voxels_dataset=n_voxels)
    plan_2d["batch_dice"] = True
    configs: dict[str, dict[str, Any]] = {"2d": plan_2d}
    if median_t[0] != 1:
        configs.update(_plan_3d(ctx, spacing_t, median_t, n_voxels, int(sp["numTraining"]), ident))
    return Plans.from_json(to_jsonable({
        "dataset_name": dataset_name, "plans_name": plans_name, **_original_medians(fp, forward),
        "image_reader_writer": image_reader_writer, "transpose_forward": forward, "transpose_backward": backward,
        "configurations": configs, "experiment_planner_used": preset.name, "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": _sorted_json(fp["foreground_intensity_properties_per_channel"]),
    }))


def _original_medians(fp: dict[str, Any], forward: list[int]) -> dict[str, list[Any]]:
    """Median spacing (floats) and median cropped shape (ints) of the raw cases, transposed."""
    spacing = np.median(np.vstack([np.asarray(s, dtype=np.float64) for s in fp["spacings"]]), axis=0)[forward]
    shape = np.median(np.vstack([np.asarray(s, dtype=np.float64) for s in fp["shapes_after_crop"]]), axis=0)[forward]
    return {"original_median_spacing_after_transp": [float(v) for v in spacing],
            "original_median_shape_after_transp": [int(round(float(v))) for v in shape]}


def merge_existing_configurations(new: Plans, old: Plans | Mapping[str, Any] | None) -> Plans:
    """Keep configurations of an existing plans file that re-planning does not produce (user additions).

    Configurations of ``new`` come first and replace same-named old ones; the others follow in their old order
    (nnU-Net's ``save_plans`` behaviour).
    """
    if old is None:
        return new
    old_configs = old.configurations if isinstance(old, Plans) else dict(old.get("configurations", {}))
    merged = copy.deepcopy(new.configurations)
    merged.update({k: copy.deepcopy(v) for k, v in old_configs.items() if k not in merged})
    d = new.to_json()
    d["configurations"] = merged
    return Plans.from_json(d)
