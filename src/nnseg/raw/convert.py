"""Convert Medical Segmentation Decathlon task folders and old nnU-Net (v1) datasets to the nnU-Net v2 raw format.

``convert_msd`` turns ``TaskXX_Name/{imagesTr,imagesTs,labelsTr,dataset.json}`` into ``raw_root/DatasetXXX_Name``:
4D images are split into one file per channel (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... with the spacing,
origin and direction of the first three axes), 3D images are copied as ``CASE_0000.nii.gz``, labels are copied,
and ``dataset.json`` is rewritten (labels name -> int, ``modality`` -> ``channel_names``, ``file_ending``, the
``training``/``test`` lists dropped). Files starting with ``.`` or ``_`` are skipped. The output is written into a
hidden temporary folder and renamed at the end, so an error leaves nothing half-converted.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nnseg._types import PathLike
from nnseg.jsonio import load_json, replace_path, save_json
from nnseg.parallel import spawn_map
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.raw.verify import default_num_processes

_TASK_RE = re.compile(r"^Task(\d+)_(.+)$")
_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")
NIFTI = ".nii.gz"


def msd_json_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    """MSD / nnU-Net v1 ``dataset.json`` -> v2: the key order of nnU-Net's converter is kept.

    ``training``/``test`` are removed, ``labels`` ``{"0": "background", ...}`` becomes ``{"background": 0, ...}``
    in place, ``file_ending`` is set to ``.nii.gz`` and ``modality`` moves to ``channel_names`` (at the end).
    """
    out = dict(d)
    out.pop("training", None)
    out.pop("test", None)
    channels = out.pop("modality", None)
    if isinstance(out.get("labels"), dict):
        try:
            out["labels"] = {str(name): int(value) for value, name in out["labels"].items()}
        except ValueError:
            raise ValueError(f"dataset.json labels {out['labels']} are not of the MSD form "
                             "{\"0\": \"background\", \"1\": \"name\", ...}; fix the labels") from None
    out["file_ending"] = NIFTI
    if channels is not None:
        out["channel_names"] = channels
    return out


def dataset_folders_with_id(dataset_id: int, roots: Sequence[PathLike | None]) -> list[Path]:
    """Folders ``DatasetXXX_*`` with this id in any of ``roots`` (None entries ignored)."""
    found = []
    for root in roots:
        if root is None or not Path(root).is_dir():
            continue
        found += [p for p in sorted(Path(root).iterdir())
                  if (m := _DATASET_RE.match(p.name)) and int(m.group(1)) == dataset_id]
    return found


def _check_id_free(dataset_id: int, roots: Sequence[PathLike | None]) -> None:
    clashes = dataset_folders_with_id(dataset_id, roots)
    if clashes:
        raise FileExistsError(f"dataset id {dataset_id} is already used by {clashes[0]}; convert under a free id with "
                              f"-overwrite_id N (or remove {clashes[0]} if it is stale)")


def _parse_task_name(task_folder: Path) -> tuple[int, str]:
    m = _TASK_RE.match(task_folder.name)
    if m is None:
        raise ValueError(f"{task_folder} is not an MSD task folder name; expected TaskXX_Name, e.g. Task04_Hippocampus")
    return int(m.group(1)), m.group(2)


@contextmanager
def staging_folder(raw_root: Path, final_name: str) -> Iterator[Path]:
    """A hidden folder in ``raw_root`` that is renamed to ``final_name`` on success and removed on error."""
    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_name}.partial-", dir=raw_root))
    try:
        yield tmp
        target = raw_root / final_name
        if target.exists():
            raise FileExistsError(f"{target} appeared during the conversion; remove it and convert again")
        replace_path(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _visible_files(folder: Path, ending: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(ending) and not p.name.startswith((".", "_"))]


def split_4d_nifti(source: str, out_folder: str) -> list[str]:
    """Write one MSD image as ``<case>_XXXX.nii.gz`` files; returns their names (a spawn-pool worker).

    A 3D file is copied byte for byte as ``_0000``; a 4D file is split along its last SimpleITK axis, each volume
    keeping the spacing, origin and direction of the first three axes.
    """
    import SimpleITK as sitk

    src = Path(source)
    case = src.name[: -len(NIFTI)]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src))
    reader.ReadImageInformation()
    dim = reader.GetDimension()
    if dim in (2, 3):
        name = f"{case}_0000{NIFTI}"
        shutil.copyfile(src, Path(out_folder) / name)
        return [name]
    if dim != 4:
        raise ValueError(f"{src} has {dim} dimensions; MSD images must be 3D or 4D (channels last)")
    return _write_channels(sitk.ReadImage(str(src)), case, Path(out_folder))


def _write_channels(image: Any, case: str, out_folder: Path) -> list[str]:
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)  # (channels, z, y, x)
    spacing = image.GetSpacing()[:3]
    origin = image.GetOrigin()[:3]
    direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3].ravel().tolist()
    names = []
    for c in range(array.shape[0]):
        volume = sitk.GetImageFromArray(array[c])
        volume.SetSpacing(spacing)
        volume.SetOrigin(origin)
        volume.SetDirection(direction)
        name = f"{case}_{c:04d}{NIFTI}"
        sitk.WriteImage(volume, str(out_folder / name), True)
        names.append(name)
    return names


def _convert_images(jobs: list[tuple[str, str]], num_processes: int) -> None:
    spawn_map(split_4d_nifti, jobs, num_processes=num_processes, star=True)


def convert_msd(task_folder: PathLike, raw_root: PathLike, *, preprocessed_root: PathLike | None = None,
                results_root: PathLike | None = None, overwrite_id: int | None = None,
                num_processes: int | None = None) -> Path:
    """Convert an MSD ``TaskXX_Name`` folder into ``raw_root/DatasetXXX_Name`` (``nnUNetv2_convert_MSD_dataset``).

    Args:
        task_folder: the MSD task folder (``imagesTr``, ``labelsTr``, ``dataset.json``; ``imagesTs`` optional).
        raw_root, preprocessed_root, results_root: the nnU-Net folders; the id must be unused in all of them.
        overwrite_id: dataset id to use instead of the task number.
        num_processes: spawn workers splitting the images (default ``min(8, cpu count)``).

    Returns:
        The new raw dataset folder.

    Raises:
        ValueError / FileNotFoundError: bad folder name or layout; FileExistsError: the id is already used.
    """
    task_folder, raw_root = Path(task_folder), Path(raw_root)
    task_id, name = _parse_task_name(task_folder)
    dataset_id = task_id if overwrite_id is None else int(overwrite_id)
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id {dataset_id} is outside 1..999; pass -overwrite_id with a 3-digit id")
    for required in ("imagesTr", "labelsTr", "dataset.json"):
        if not (task_folder / required).exists():
            raise FileNotFoundError(f"{task_folder / required} is missing; an MSD task folder holds imagesTr, labelsTr "
                                    "and dataset.json")
    _check_id_free(dataset_id, [raw_root, preprocessed_root, results_root])
    dataset_json = msd_json_to_v2(load_json(task_folder / "dataset.json"))
    DatasetSpec.from_json(dataset_json, source=task_folder / "dataset.json")
    dataset_name = f"Dataset{dataset_id:03d}_{name}"
    with staging_folder(raw_root, dataset_name) as out:
        jobs = []
        for sub in ("imagesTr", "imagesTs"):
            if (task_folder / sub).is_dir():
                (out / sub).mkdir()
                jobs += [(str(p), str(out / sub)) for p in _visible_files(task_folder / sub, NIFTI)]
        _convert_images(jobs, num_processes or default_num_processes())
        (out / "labelsTr").mkdir()
        for p in _visible_files(task_folder / "labelsTr", NIFTI):
            shutil.copyfile(p, out / "labelsTr" / p.name)
        save_json(dataset_json, out / "dataset.json", sort_keys=False)
    return raw_root / dataset_name


def convert_old_nnunet(input_folder: PathLike, output_dataset_name: str, raw_root: PathLike, *,
                       preprocessed_root: PathLike | None = None, results_root: PathLike | None = None) -> Path:
    """Copy an nnU-Net v1 task folder (images already split into ``_0000`` files) into ``raw_root/output_dataset_name``.

    ``imagesTr``, ``labelsTr``, ``imagesTs`` and ``labelsTs`` (those present) are copied and ``dataset.json`` is
    rewritten to the v2 form (``nnUNetv2_convert_old_nnUNet_dataset``).

    Raises:
        ValueError: ``output_dataset_name`` is not ``DatasetXXX_Name``; FileNotFoundError: no ``dataset.json``;
        FileExistsError: the id is already used.
    """
    input_folder, raw_root = Path(input_folder), Path(raw_root)
    m = _DATASET_RE.match(output_dataset_name)
    if m is None:
        raise ValueError(f"output_dataset_name {output_dataset_name!r} must look like DatasetXXX_Name "
                         "(3-digit id), e.g. Dataset004_Hippocampus")
    if not (input_folder / "dataset.json").is_file():
        raise FileNotFoundError(f"{input_folder / 'dataset.json'} is missing; pass an nnU-Net v1 task folder")
    _check_id_free(int(m.group(1)), [raw_root, preprocessed_root, results_root])
    dataset_json = msd_json_to_v2(load_json(input_folder / "dataset.json"))
    DatasetSpec.from_json(dataset_json, source=input_folder / "dataset.json")
    with staging_folder(raw_root, output_dataset_name) as out:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            if (input_folder / sub).is_dir():
                shutil.copytree(input_folder / sub, out / sub, copy_function=shutil.copyfile,
                                ignore=shutil.ignore_patterns(".*"))
        save_json(dataset_json, out / "dataset.json", sort_keys=False)
    return raw_root / output_dataset_name
