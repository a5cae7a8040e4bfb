"""A small synthetic dataset in nnU-Net v2 raw format, quick to write and easy to segment (tests and the demo).

Every case holds an "organ" (a random ellipsoid, label 1) that is clearly brighter than the background, and by
default a "lesion" (a smaller ellipsoid inside the organ, label 2) that is brighter still; Gaussian noise and a
smooth intensity ramp make the task not quite trivial. 3D cases are ``.nii.gz`` (SimpleITK), 2D cases ``.png``
(uint8 grey). Options add a second channel (inverted contrast), anisotropic spacing, region labels
(``organ = [1, 2]``, ``lesion = 2``) or an ``ignore`` label over part of each label map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path, save_json

_SHAPE_3D = (32, 40, 40)
_SHAPE_3D_ANISO = (16, 48, 48)
_SHAPE_2D = (64, 64)
_CHANNEL_NAMES = ("MRI", "T2")


def demo_labels(*, lesion: bool, regions: bool, ignore_label: bool) -> dict[str, int | list[int]]:
    """The ``labels`` entry of the demo dataset.json."""
    labels: dict[str, int | list[int]] = {"background": 0}
    if regions:
        labels.update({"organ": [1, 2], "lesion": 2})
    else:
        labels["organ"] = 1
        if lesion:
            labels["lesion"] = 2
    if ignore_label:
        labels["ignore"] = 3 if lesion else 2
    return labels


def _ellipsoid(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
    return np.asarray(dist <= 1.0)


def demo_case(rng: np.random.Generator, shape: tuple[int, ...], *, lesion: bool = True,
              num_channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case.

    Args:
        rng: random generator (the case is a pure function of its state).
        shape: spatial shape (2 or 3 axes).
        lesion: also place a lesion (label 2) inside the organ.
        num_channels: 1 or 2 (channel 1 has the organ darker than the background).

    Returns:
        ``(images float32 (C, *shape) with values roughly in [0, 255], labels uint8 shape)``.
    """
    size = np.asarray(shape, dtype=np.float64)
    radii = size * rng.uniform(0.2, 0.32, size=len(shape))
    center = size / 2 + rng.uniform(-0.12, 0.12, size=len(shape)) * size
    seg = _ellipsoid(shape, center, radii).astype(np.uint8)
    if lesion:
        lesion_radii = np.maximum(radii * rng.uniform(0.3, 0.45, size=len(shape)), 1.5)
        offset = (radii - lesion_radii) * rng.uniform(-0.5, 0.5, size=len(shape))
        seg[_ellipsoid(shape, center + offset, lesion_radii) & (seg == 1)] = 2
    ramp = np.linspace(-15, 15, shape[-1]).reshape((1,) * (len(shape) - 1) + (-1,))
    means = np.array([[40.0, 130.0, 210.0], [200.0, 90.0, 40.0]])[:num_channels]
    images = np.stack([m[seg] + ramp + rng.normal(0, 12, size=shape) for m in means])
    return np.clip(images, 0, 255).astype(np.float32), seg


def _write_nifti(array: np.ndarray, path: Path, spacing: tuple[float, ...]) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.rint(array).astype(np.uint8)).save(tmp, format="PNG")


def _write(array: np.ndarray, path: Path, spacing: tuple[float, ...]) -> None:
    if path.name.endswith(".png"):
        _write_png(array, path)
    else:
        _write_nifti(array, path, spacing)


def _mask_ignore(seg: np.ndarray, ignore: int, rng: np.random.Generator) -> np.ndarray:
    """Mark a random band of the last axis (a quarter of it) as not annotated."""
    width = max(1, seg.shape[-1] // 4)
    start = int(rng.integers(0, seg.shape[-1] - width + 1))
    out = seg.copy()
    out[..., start:start + width] = ignore
    return out


def make_demo_dataset(out_folder: PathLike, *, num_cases: int = 8, dims: int = 3, num_channels: int = 1,
                      anisotropic: bool = False, regions: bool = False, ignore_label: bool = False,
                      lesion: bool = True, shape: tuple[int, ...] | None = None, num_test: int = 2,
                      seed: int = 0) -> Path:
    """Write a synthetic raw dataset (``imagesTr``, ``labelsTr``, ``imagesTs``, ``dataset.json``) into ``out_folder``.

    Args:
        out_folder: the dataset folder, e.g. ``nnUNet_raw/Dataset999_Demo`` (created; existing files are overwritten).
        num_cases: labelled training cases (``case_000`` ...); ``num_test`` unlabelled cases go to ``imagesTs``.
        dims: 3 (``.nii.gz``) or 2 (``.png``).
        num_channels: 1 or 2.
        anisotropic: 3D only: spacing (3, 0.75, 0.75) mm instead of isotropic 1 mm.
        regions: labels ``organ = [1, 2]``, ``lesion = 2`` with ``regions_class_order [1, 2]`` (needs the lesion).
        ignore_label: add an ``ignore`` label covering a quarter of each training label map.
        lesion: include the lesion (label 2).
        shape: spatial shape (default 32x40x40, 16x48x48 anisotropic, 64x64 in 2D).
        seed: random seed; the same arguments always write the same files.

    Returns:
        ``out_folder``.
    """
    _check_demo_args(dims, num_channels, anisotropic, regions, lesion, num_cases, shape)
    if num_test < 0:
        raise ValueError(f"num_test={num_test}; the number of test cases cannot be negative")
    out = Path(out_folder)
    shape = tuple(shape) if shape is not None else (_SHAPE_2D if dims == 2 else _SHAPE_3D_ANISO if anisotropic else _SHAPE_3D)
    spacing = (3.0, 0.75, 0.75) if anisotropic else (1.0,) * dims
    ending = ".png" if dims == 2 else ".nii.gz"
    labels = demo_labels(lesion=lesion, regions=regions, ignore_label=ignore_label)
    rng = np.random.default_rng(seed)
    for i in range(num_cases + num_test):
        images, seg = demo_case(rng, shape, lesion=lesion, num_channels=num_channels)
        train = i < num_cases
        case = f"case_{i:03d}"
        for c in range(num_channels):
            _write(images[c], out / ("imagesTr" if train else "imagesTs") / f"{case}_{c:04d}{ending}", spacing)
        if train:
            if ignore_label:
                seg = _mask_ignore(seg, int(labels["ignore"]), rng)  # type: ignore[arg-type]
            _write(seg, out / "labelsTr" / f"{case}{ending}", spacing)
    save_json(_demo_json(labels, num_channels, num_cases, ending, regions, dims), out / "dataset.json")
    return out


def _demo_json(labels: dict[str, int | list[int]], num_channels: int, num_cases: int, ending: str,
               regions: bool, dims: int) -> dict[str, object]:
    d: dict[str, object] = {
        "channel_names": {str(c): _CHANNEL_NAMES[c] for c in range(num_channels)},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": ending,
    }
    if regions:
        d["regions_class_order"] = [1, 2]
    d["name"] = "nnseg demo"
    d["description"] = f"synthetic {dims}D organ/lesion dataset written by nnseg.raw.demo_data"
    return d


def _check_demo_args(dims: int, num_channels: int, anisotropic: bool, regions: bool, lesion: bool, num_cases: int,
                     shape: tuple[int, ...] | None) -> None:
    if dims not in (2, 3):
        raise ValueError(f"dims={dims}; the demo dataset is 2 (png) or 3 (nii.gz) dimensional")
    if num_channels not in (1, 2):
        raise ValueError(f"num_channels={num_channels}; the demo dataset has 1 or 2 channels")
    if anisotropic and dims == 2:
        raise ValueError("anisotropic spacing needs dims=3 (png files have no spacing)")
    if regions and not lesion:
        raise ValueError("regions=True needs the lesion (organ = [1, 2], lesion = 2); leave lesion=True")
    if num_cases < 1:
        raise ValueError(f"num_cases={num_cases}; write at least one training case")
    if shape is not None and (len(shape) != dims or min(shape) < 8):
        raise ValueError(f"shape={shape} must have {dims} axes of at least 8 voxels")
