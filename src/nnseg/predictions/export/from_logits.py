"""From network logits to files in the original image space (nnU-Net's ``export_prediction_from_logits``).

Steps (reference §1.11): resample the logits to ``shape_after_cropping_and_before_resampling`` with the plans'
``resampling_fn_probabilities_kwargs`` (torch, on the logits' device; order 1, separate-z nearest along the
low-resolution axis as nnU-Net decides it) -> softmax + argmax (or sigmoid > 0.5 painted in ``regions_class_order``) ->
paste into ``shape_before_cropping`` at ``bbox_used_for_cropping`` (probabilities: background 1 outside the box) ->
``transpose_backward`` -> the plans' reader/writer writes the label map (uint8 below 255 labels) with the input's
geometry. ``save_probabilities`` adds ``CASE.npz`` and ``CASE.pkl`` exactly as nnU-Net writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nnseg._types import Geometry, PathLike
from nnseg.jsonio import atomic_path
from nnseg.plans.schema import ConfigurationPlans, Plans
from nnseg.predictions.export.predict_io import save_probabilities_npz, save_properties_pkl
from nnseg.preprocessed.resample import get_resampler, resample_data_or_seg_to_shape
from nnseg.preprocessed.resample_rules import ANISO_THRESHOLD, determine_do_sep_z_and_axis, z_coordinates
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.raw.image_io import get_io

_MODES = {(0, 2): "nearest-exact", (0, 3): "nearest-exact", (1, 2): "bilinear", (1, 3): "trilinear"}


def _interpolate(x: torch.Tensor, size: Sequence[int], order: int) -> torch.Tensor:
    """Resize the trailing ``len(size)`` axes of ``x (C, *spatial)`` (skimage ``resize`` order 0/1, edge mode)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[1:]) == size:
        return x
    mode = _MODES[(order, len(size))]
    kwargs = {"align_corners": False} if order == 1 else {}
    return F.interpolate(x[None], size=size, mode=mode, **kwargs)[0]


def _resample_axis0(x: torch.Tensor, n_out: int, order_z: int) -> torch.Tensor:
    """Resample axis 1 of ``x (C, Z, ...)`` to ``n_out`` with nnU-Net's ``map_coordinates`` grid (mode nearest)."""
    n_in = x.shape[1]
    coords = torch.from_numpy(z_coordinates(n_in, n_out)).to(x.device)
    if order_z == 0:
        idx = torch.clamp(torch.floor(coords + 0.5), 0, n_in - 1).long()
        return x.index_select(1, idx)
    coords = torch.clamp(coords, 0, n_in - 1)
    lo = torch.floor(coords).long()
    hi = torch.clamp(lo + 1, max=n_in - 1)
    w = (coords - lo).to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return x.index_select(1, lo) * (1 - w) + x.index_select(1, hi) * w


def resample_logits(data: torch.Tensor, new_shape: Sequence[int], current_spacing: Sequence[float],
                    new_spacing: Sequence[float], *, is_seg: bool = False, order: int = 1, order_z: int = 0,
                    force_separate_z: bool | None = None,
                    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD) -> torch.Tensor:
    """Torch twin of :func:`nnseg.preprocessed.resample.resample_data_or_seg_to_shape` for float data.

    Args:
        data: float ``(C, X, Y, Z)`` tensor (any device; the result stays there).
        new_shape: target spatial shape.
        current_spacing, new_spacing: spacings for nnU-Net's separate-z decision.
        is_seg, order, order_z, force_separate_z, separate_z_anisotropy_threshold: the plans' kwargs. Orders above 1
            and ``is_seg`` use the numpy implementation (on CPU) instead.

    Returns:
        ``(C, *new_shape)`` tensor; ``data`` itself when the shape does not change.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    if is_seg or order > 1 or order_z > 1:
        out = resample_data_or_seg_to_shape(data.detach().cpu().numpy(), new_shape, current_spacing, new_spacing,
                                            is_seg=is_seg, order=order, order_z=order_z, force_separate_z=force_separate_z)
        return torch.from_numpy(np.ascontiguousarray(out)).to(data.device)
    do_sep, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing, separate_z_anisotropy_threshold)
    if not do_sep or axis is None:
        return _interpolate(data, new_shape, order)
    x = data.movedim(axis + 1, 1)  # (C, Z, a, b) with the low-resolution axis first
    c, z = x.shape[:2]
    plane = tuple(s for i, s in enumerate(new_shape) if i != axis)
    x = _interpolate(x.reshape(c * z, *x.shape[2:]), plane, order).reshape(c, z, *plane)
    if z != new_shape[axis]:
        x = _resample_axis0(x, new_shape[axis], order_z)
    return x.movedim(1, axis + 1).contiguous()



def resample_probabilities(logits: torch.Tensor, new_shape: Sequence[int], current_spacing: Sequence[float],
                           new_spacing: Sequence[float], *, configuration: ConfigurationPlans) -> torch.Tensor:
    """Resample float ``(K, ...)`` logits with the plans' ``resampling_fn_probabilities`` and its kwargs.

    ``resample_torch_fornnunet`` (``*_torchres`` plans) and the default ``resample_data_or_seg_to_shape`` (as its
    torch twin :func:`resample_logits`) run on the logits' device; any other registered function runs on the CPU.
    """
    name = configuration.resampling_fn_probabilities
    kwargs = dict(configuration.resampling_fn_probabilities_kwargs)
    kwargs.pop("is_seg", None)
    if name == "resample_torch_fornnunet":
        from nnseg.preprocessed.resample_torch import resample_torch_fornnunet

        return resample_torch_fornnunet(logits, new_shape, current_spacing, new_spacing, is_seg=False,
                                        device=logits.device, **kwargs)
    if name == "resample_data_or_seg_to_shape":
        return resample_logits(logits, new_shape, current_spacing, new_spacing, **kwargs)
    out = get_resampler(name, {**kwargs, "is_seg": False})(logits.detach().cpu().numpy(), new_shape,
                                                          current_spacing, new_spacing)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(logits.device)

INPLACE_NONLIN_BYTES = 1 << 30  # from this size on, the softmax overwrites its input block by block
_SOFTMAX_BLOCK = 1 << 24  # values per block (64 MiB of float32)


def apply_inference_nonlin(logits: torch.Tensor, spec: DatasetSpec, *, inplace: bool = False) -> torch.Tensor:
    """Softmax over classes (sigmoid per region for region models), float32 ``(K, ...)``.

    ``inplace``: ``logits`` (float32, contiguous) may be overwritten; a softmax of at least
    :data:`INPLACE_NONLIN_BYTES` then runs in voxel blocks into ``logits`` instead of a second array of its size (a
    118-class CT: 2.2 GB less; the values differ from the one-call softmax by float rounding, ~3e-8).
    """
    logits = logits.float()
    if spec.has_regions:
        return torch.sigmoid_(logits) if inplace else torch.sigmoid(logits)
    if not inplace or not logits.is_contiguous() or logits.numel() * 4 < INPLACE_NONLIN_BYTES:
        return torch.softmax(logits, dim=0)
    flat = logits.view(logits.shape[0], -1)
    step = max(1, _SOFTMAX_BLOCK // logits.shape[0])
    for start in range(0, flat.shape[1], step):
        flat[:, start:start + step] = torch.softmax(flat[:, start:start + step], dim=0)
    return logits


def segmentation_dtype(spec: DatasetSpec) -> torch.dtype:
    """uint8 below 255 foreground labels, else int32 (written as the writer's integer type)."""
    return torch.uint8 if len(spec.foreground_labels) < 255 else torch.int32


def probabilities_to_segmentation(probabilities: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Argmax over classes, or regions painted in ``regions_class_order`` where sigmoid > 0.5."""
    dtype = segmentation_dtype(spec)
    if not spec.has_regions:
        return torch.argmax(probabilities, dim=0).to(dtype)
    order = spec.regions_class_order
    if order is None or len(order) != probabilities.shape[0]:
        raise ValueError(f"dataset.json regions_class_order {order} must list one label per region output "
                         f"({probabilities.shape[0]} outputs); fix dataset.json")
    seg = torch.zeros(probabilities.shape[1:], dtype=dtype, device=probabilities.device)
    for i, label in enumerate(order):
        seg[probabilities[i] > 0.5] = int(label)
    return seg


def _bbox_slices(bbox: Sequence[Sequence[int]]) -> tuple[slice, ...]:
    return tuple(slice(int(lo), int(hi)) for lo, hi in bbox)


def revert_cropping(seg: torch.Tensor, properties: Mapping[str, Any]) -> torch.Tensor:
    """Paste ``seg (X, Y, Z)`` into zeros of ``shape_before_cropping`` at the bbox."""
    full = torch.zeros(tuple(properties["shape_before_cropping"]), dtype=seg.dtype, device=seg.device)
    full[_bbox_slices(properties["bbox_used_for_cropping"])] = seg
    return full


def revert_cropping_probabilities(probs: torch.Tensor, properties: Mapping[str, Any], *, has_regions: bool) -> torch.Tensor:
    """Paste ``probs (K, X, Y, Z)``; outside the bbox background has probability 1 (regions: all 0)."""
    full = torch.zeros((probs.shape[0], *properties["shape_before_cropping"]), dtype=probs.dtype, device=probs.device)
    if not has_regions:
        full[0] = 1
    full[(slice(None), *_bbox_slices(properties["bbox_used_for_cropping"]))] = probs
    return full


def current_and_target_spacing(properties: Mapping[str, Any], plans: Plans,
                               configuration: ConfigurationPlans) -> tuple[list[float], list[float]]:
    """Spacing of the network output and of the cropped original image, both in transposed axis order."""
    spacing_t = [float(properties["spacing"][i]) for i in plans.transpose_forward]
    n = len(properties["shape_after_cropping_and_before_resampling"])
    current = list(configuration.spacing) if len(configuration.spacing) == n else [spacing_t[0], *configuration.spacing]
    return [float(s) for s in current], spacing_t


def convert_logits(logits: torch.Tensor, properties: Mapping[str, Any], *, plans: Plans, configuration: ConfigurationPlans,
                   spec: DatasetSpec, return_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``(K, *preprocessed_shape)`` -> segmentation (and probabilities) in the original image space.

    Returns:
        ``(seg, probs)``: integer ``(X, Y, Z)`` in the input file's array order and, if asked, float32 ``(K, X, Y, Z)``
        (else None).
    """
    current, target = current_and_target_spacing(properties, plans, configuration)
    with torch.no_grad():
        resampled = resample_probabilities(logits.float(), properties["shape_after_cropping_and_before_resampling"],
                                           current, target, configuration=configuration)
        probs = apply_inference_nonlin(resampled, spec, inplace=resampled is not logits)  # never the caller's tensor
        del resampled
        seg = revert_cropping(probabilities_to_segmentation(probs, spec), properties)
        seg_np = seg.permute(*plans.transpose_backward).cpu().numpy()
        probs_np = None
        if return_probabilities:
            full = revert_cropping_probabilities(probs, properties, has_regions=spec.has_regions)
            probs_np = full.permute(0, *[i + 1 for i in plans.transpose_backward]).cpu().numpy()
    return np.ascontiguousarray(seg_np), None if probs_np is None else np.ascontiguousarray(probs_np, dtype=np.float32)


def write_segmentation(seg: np.ndarray, path: Path, geometry: Geometry, *, reader: str) -> None:
    """Write ``seg`` atomically with the named reader/writer (``geometry.reader`` may differ: the plans decide)."""
    seg = seg.astype(np.uint16) if seg.dtype == np.int32 else seg
    with atomic_path(path) as tmp:
        get_io(reader).write_seg(seg, tmp, geometry)


def export_prediction(logits: torch.Tensor, properties: Mapping[str, Any], output_truncated: Path, *, plans: Plans,
                      configuration: ConfigurationPlans, spec: DatasetSpec, save_probabilities: bool = False,
                      geometry: Geometry | None = None) -> None:
    """Convert logits and write ``<output_truncated><file_ending>`` (+ ``.npz`` / ``.pkl`` with ``save_probabilities``).

    Args:
        logits: ``(K, *preprocessed_shape)`` network output for one case (any float dtype/device).
        properties: the case's properties from :func:`nnseg.preprocessed.preprocess.preprocess_case`.
        output_truncated: output path without file ending (e.g. ``out/case_001``).
        geometry: the input's geometry; default rebuilt from ``properties``.
    """
    seg, probs = convert_logits(logits, properties, plans=plans, configuration=configuration, spec=spec,
                                return_probabilities=save_probabilities)
    write_outputs(seg, probs, properties, output_truncated, plans=plans, spec=spec, geometry=geometry)


def write_outputs(seg: np.ndarray, probs: np.ndarray | None, properties: Mapping[str, Any], output_truncated: Path, *,
                  plans: Plans, spec: DatasetSpec, geometry: Geometry | None = None) -> None:
    """Write the label map (and ``.npz`` + ``.pkl`` when ``probs`` is given) of one case."""
    reader = plans.image_reader_writer  # as nnU-Net's predictor: the plans' reader/writer writes the outputs
    if geometry is None:
        geometry = Geometry.from_properties(dict(properties), reader=reader)
    output_truncated = Path(output_truncated)
    if probs is not None:
        save_probabilities_npz(probs, output_truncated.with_name(output_truncated.name + ".npz"))
        save_properties_pkl(properties, output_truncated.with_name(output_truncated.name + ".pkl"))
    write_segmentation(seg, output_truncated.with_name(output_truncated.name + spec.file_ending), geometry, reader=reader)


def _ensemble_case(folders: Sequence[Path], identifier: str, output: Path, plans: Plans, spec: DatasetSpec,
                   save_npz: bool) -> None:
    from nnseg.predictions.export.predict_io import load_probabilities_npz, load_properties_pkl

    total = load_probabilities_npz(folders[0] / f"{identifier}.npz")
    for folder in folders[1:]:
        total += load_probabilities_npz(folder / f"{identifier}.npz")
    total /= len(folders)
    properties = load_properties_pkl(folders[0] / f"{identifier}.pkl")
    seg = probabilities_to_segmentation(torch.from_numpy(total), spec).numpy()
    write_outputs(seg, total if save_npz else None, properties, output / identifier, plans=plans, spec=spec)


def ensemble_folders(input_folders: Sequence[PathLike], output_folder: PathLike, *, save_npz: bool = False,
                     num_processes: int = 8) -> list[str]:
    """Average the ``CASE.npz`` probabilities of several prediction folders and write segmentations (``nnUNetv2_ensemble``).

    Every folder must hold the same ``CASE.npz`` files (with ``CASE.pkl``); ``dataset.json`` and ``plans.json`` are read
    from the first folder and copied to the output, and the plans' reader/writer writes the results.

    Returns:
        The identifiers written.

    Raises:
        FileNotFoundError / ValueError: a folder is missing, holds no ``.npz`` files, or the folders hold different cases.
    """
    from concurrent.futures import ThreadPoolExecutor

    from nnseg.jsonio import load_json, save_json
    from nnseg.raw.dataset_json import load_dataset_json

    folders = [Path(f) for f in input_folders]
    identifiers = _common_npz_cases(folders)
    plans = Plans.from_json(load_json(_required(folders[0] / "plans.json")))
    spec = load_dataset_json(_required(folders[0] / "dataset.json"))
    output = Path(output_folder)
    output.mkdir(parents=True, exist_ok=True)
    save_json(load_json(folders[0] / "dataset.json"), output / "dataset.json")
    save_json(load_json(folders[0] / "plans.json"), output / "plans.json")
    with ThreadPoolExecutor(max_workers=max(1, num_processes)) as pool:
        for future in [pool.submit(_ensemble_case, folders, i, output, plans, spec, save_npz) for i in identifiers]:
            future.result()
    return identifiers


def _required(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; ensembling reads dataset.json and plans.json from the first input "
                                "folder (nnUNetv2_predict writes them)")
    return path


def _common_npz_cases(folders: Sequence[Path]) -> list[str]:
    if len(folders) < 2:
        raise ValueError(f"ensembling needs at least two prediction folders, got {[str(f) for f in folders]}")
    per_folder = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"prediction folder {folder} does not exist")
        names = {p.name[:-4] for p in folder.glob("*.npz")}
        if not names:
            raise ValueError(f"{folder} holds no CASE.npz files; predict with --save_probabilities (or train with --npz)")
        per_folder.append(names)
    if any(names != per_folder[0] for names in per_folder[1:]):
        diff = {str(f): sorted(per_folder[0] ^ n)[:5] for f, n in zip(folders[1:], per_folder[1:]) if n != per_folder[0]}
        raise ValueError(f"the folders hold different cases (first differences per folder vs {folders[0]}: {diff}); "
                         "every folder must contain the same CASE.npz files")
    return sorted(per_folder[0])
