"""Overlay pictures of the training data (nnU-Net's ``nnUNetv2_plot_overlay_pngs``).

For every training case the axis-0 slice with the most foreground is chosen (:func:`select_slice`), the chosen image
channel is scaled to 0-255 on that slice and each label is blended over it in its own colour (:func:`overlay`), and
``CASE.png`` is written. Data come from the preprocessed folder of a configuration (default) or from the raw dataset.
Differences to nnU-Net (which adds colours and renormalises): colours are alpha-blended
(``(1 - intensity) * gray + intensity * colour``) and a label value always gets the same colour, in every case, so
pictures can be compared; background, and the -1 that preprocessing writes outside the non-zero region, stay gray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path
from nnseg.parallel import spawn_map
from nnseg.plans.schema import load_plans
from nnseg.raw.dataset_json import load_dataset_json
from nnseg.raw.discover import training_cases
from nnseg.raw.image_io import determine_io, read_images, read_seg

#: 15 distinct colours (RGB hex); label ``l > 0`` gets ``COLOR_CYCLE[(l - 1) % 15]``.
COLOR_CYCLE: tuple[str, ...] = (
    "4363d8", "f58231", "3cb44b", "e6194b", "911eb4", "ffe119", "42d4f4", "f032e6",
    "bfef45", "9a6324", "469990", "800000", "808000", "000075", "dcbeff",
)


@dataclass(frozen=True)
class OverlayJob:
    """One picture to draw (picklable, for spawn workers): read with ``raw_io`` (raw) or from ``data_folder``."""

    identifier: str
    output: Path
    channel_idx: int
    intensity: float
    data_folder: Path | None = None
    raw_io: str | None = None
    image_files: tuple[Path, ...] = ()
    label_file: Path | None = None
    colors: tuple[str, ...] = COLOR_CYCLE


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"4363d8"`` (or ``"#4363d8"``) -> ``(67, 99, 216)``."""
    text = color.lstrip("#")
    if len(text) != 6:
        raise ValueError(f"colour {color!r} is not a 6-digit RGB hex value such as '4363d8'")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def select_slice(seg: np.ndarray) -> int:
    """The axis-0 index of the slice with the most foreground, every label weighted equally (as nnU-Net).

    Args:
        seg: integer labels ``(X, Y, Z)`` (2D data: ``(1, X, Y)``); values <= 0 are background.

    Returns:
        The slice where the mean over labels of (label voxels in slice / label voxels) is largest (first on
        ties); the middle slice when there is no foreground.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"select_slice needs a (X, Y, Z) label map, got shape {seg.shape}")
    labels = [int(v) for v in np.unique(seg) if v > 0]
    if not labels:
        return seg.shape[0] // 2
    score = np.zeros(seg.shape[0], dtype=np.float64)
    for label in labels:
        per_slice = (seg == label).sum(axis=(1, 2)).astype(np.float64)
        score += per_slice / per_slice.sum()
    return int(np.argmax(score))


def _to_gray(image_slice: np.ndarray) -> np.ndarray:
    """Min-max scaled float 0-255 (a constant slice becomes 0)."""
    img = np.asarray(image_slice, dtype=np.float64)
    lo, hi = float(np.min(img)), float(np.max(img))
    return np.zeros_like(img) if hi <= lo else (img - lo) / (hi - lo) * 255.0


def overlay(image_slice: np.ndarray, seg_slice: np.ndarray, *, intensity: float = 0.6,
            colors: Sequence[str] = COLOR_CYCLE) -> np.ndarray:
    """Blend labels in colour over a gray image.

    Args:
        image_slice: one channel ``(Y, Z)``, any value range (scaled to 0-255).
        seg_slice: integer labels ``(Y, Z)``; values <= 0 are not coloured.
        intensity: colour weight in [0, 1] (0: gray image only, 1: pure label colours).
        colors: RGB hex colours; label ``l`` gets ``colors[(l - 1) % len(colors)]``.

    Returns:
        uint8 RGB ``(Y, Z, 3)``.
    """
    image_slice, seg_slice = np.asarray(image_slice), np.asarray(seg_slice)
    if image_slice.shape != seg_slice.shape or image_slice.ndim != 2:
        raise ValueError(f"image slice {image_slice.shape} and label slice {seg_slice.shape} must be equal 2D shapes")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"overlay intensity {intensity} must be between 0 and 1 (nnU-Net's default is 0.6)")
    if not colors:
        raise ValueError("no colours given; pass at least one RGB hex colour")
    rgb = np.repeat(_to_gray(image_slice)[..., None], 3, axis=-1)
    palette = np.array([hex_to_rgb(c) for c in colors], dtype=np.float64)
    for label in (int(v) for v in np.unique(seg_slice) if v > 0):
        mask = seg_slice == label
        rgb[mask] = (1.0 - intensity) * rgb[mask] + intensity * palette[(label - 1) % len(palette)]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _read_job(job: OverlayJob) -> tuple[np.ndarray, np.ndarray]:
    """``(image (X, Y, Z) of the channel, seg (X, Y, Z))`` for one job."""
    if job.data_folder is not None:
        from nnseg.preprocessed.store import load_case

        data, seg, _ = load_case(job.data_folder, job.identifier)
        if seg is None:
            raise ValueError(f"case {job.identifier} in {job.data_folder} has no stored segmentation; rerun preprocessing")
        if not 0 <= job.channel_idx < data.shape[0]:
            raise ValueError(f"-channel_idx {job.channel_idx} is out of range: case {job.identifier} has {data.shape[0]} channels")
        return np.asarray(data[job.channel_idx]), np.asarray(seg[0])
    if job.raw_io is None or job.label_file is None:
        raise ValueError(f"overlay job for {job.identifier} names neither a preprocessed folder nor raw files")
    image, _ = read_images([job.image_files[job.channel_idx]], job.raw_io)
    seg, _ = read_seg(job.label_file, job.raw_io)
    return image[0], seg[0]


def draw_overlay_png(job: OverlayJob) -> Path:
    """Draw one case's picture and write it atomically (top-level: used by spawn workers)."""
    image, seg = _read_job(job)
    seg = np.rint(seg).astype(np.int32)
    index = select_slice(seg)
    picture = overlay(image[index], seg[index], intensity=job.intensity, colors=job.colors)
    with atomic_path(job.output) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return job.output


def preprocessed_data_folder(preprocessed_dataset_folder: PathLike, *, plans_name: str = "nnUNetPlans",
                             configuration: str | None = None) -> Path:
    """``nnUNet_preprocessed/DatasetX/<data_identifier>`` of a configuration (default 3d_fullres, else 2d).

    Raises:
        FileNotFoundError: the plans file or the data folder does not exist.
        ValueError: the configuration is not in the plans (the available ones are listed).
    """
    folder = Path(preprocessed_dataset_folder)
    plans_file = folder / f"{plans_name}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"plans file {plans_file} does not exist; run `nnseg plan` for this dataset, check -p, "
                                "or use --use_raw")
    plans = load_plans(plans_file)
    if configuration is None:
        configuration = "3d_fullres" if "3d_fullres" in plans.available_configurations else "2d"
    data_folder = folder / plans.configuration(configuration).data_identifier
    if not data_folder.is_dir():
        raise FileNotFoundError(f"preprocessed data {data_folder} for configuration {configuration} does not exist; "
                                f"run `nnseg preprocess -c {configuration}` or use --use_raw")
    return data_folder


def _check_options(channel_idx: int, overlay_intensity: float, num_processes: int) -> None:
    if channel_idx < 0:
        raise ValueError(f"-channel_idx must be >= 0, got {channel_idx}")
    if not 0.0 <= overlay_intensity <= 1.0:
        raise ValueError(f"-overlay_intensity must be between 0 and 1, got {overlay_intensity}")
    if num_processes < 1:
        raise ValueError(f"-np must be >= 1, got {num_processes}")


def overlay_jobs_preprocessed(data_folder: PathLike, output_folder: PathLike, *, channel_idx: int = 0,
                              overlay_intensity: float = 0.6) -> list[OverlayJob]:
    """One job per preprocessed case in ``data_folder`` (a configuration's data folder)."""
    from nnseg.preprocessed.store import list_cases

    data_folder, output_folder = Path(data_folder), Path(output_folder)
    cases = list_cases(data_folder)
    if not cases:
        raise FileNotFoundError(f"no preprocessed cases in {data_folder}; run `nnseg preprocess` or use --use_raw")
    return [OverlayJob(c, output_folder / f"{c}.png", channel_idx, overlay_intensity, data_folder=data_folder)
            for c in cases]


def overlay_jobs_raw(raw_dataset_folder: PathLike, output_folder: PathLike, *, channel_idx: int = 0,
                     overlay_intensity: float = 0.6) -> list[OverlayJob]:
    """One job per training case of a raw dataset (``imagesTr``/``labelsTr`` or dataset.json's ``dataset``)."""
    raw, output_folder = Path(raw_dataset_folder), Path(output_folder)
    spec = load_dataset_json(raw / "dataset.json")
    if channel_idx >= spec.num_channels:
        raise ValueError(f"-channel_idx {channel_idx} is out of range: {raw / 'dataset.json'} has {spec.num_channels} channels")
    cases = training_cases(raw, spec)
    if not cases:
        raise FileNotFoundError(f"no training cases in {raw / 'imagesTr'}")
    missing = [str(c.label) for c in cases if c.label is None or not c.label.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} training cases have no label file ({', '.join(missing[:3])}); "
                                "run `nnseg verify` on the dataset")
    io = determine_io(spec.file_ending, cases[0].images[0], overwrite=spec.overwrite_image_reader_writer)
    return [OverlayJob(c.identifier, output_folder / f"{c.identifier}.png", channel_idx, overlay_intensity,
                       raw_io=io.name, image_files=c.images, label_file=c.label) for c in cases]


def run_overlay_jobs(jobs: Sequence[OverlayJob], *, num_processes: int = 8) -> list[Path]:
    """Draw every job, in a spawn pool of ``num_processes`` workers (in this process when 1 or one job)."""
    return spawn_map(draw_overlay_png, jobs, num_processes=num_processes)


def plot_overlay_pngs_preprocessed(data_folder: PathLike, output_folder: PathLike, *, channel_idx: int = 0,
                                   overlay_intensity: float = 0.6, num_processes: int = 8) -> list[Path]:
    """``CASE.png`` for every case of a preprocessed data folder (see :func:`preprocessed_data_folder`).

    Returns:
        The written files, in case order.
    """
    _check_options(channel_idx, overlay_intensity, num_processes)
    jobs = overlay_jobs_preprocessed(data_folder, output_folder, channel_idx=channel_idx,
                                     overlay_intensity=overlay_intensity)
    return run_overlay_jobs(jobs, num_processes=num_processes)


def plot_overlay_pngs_raw(raw_dataset_folder: PathLike, output_folder: PathLike, *, channel_idx: int = 0,
                          overlay_intensity: float = 0.6, num_processes: int = 8) -> list[Path]:
    """``CASE.png`` for every training case of a raw dataset folder (``nnUNet_raw/DatasetX``).

    Returns:
        The written files, in case order.
    """
    _check_options(channel_idx, overlay_intensity, num_processes)
    jobs = overlay_jobs_raw(raw_dataset_folder, output_folder, channel_idx=channel_idx,
                            overlay_intensity=overlay_intensity)
    return run_overlay_jobs(jobs, num_processes=num_processes)
