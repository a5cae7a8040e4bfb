"""Derived Hippocampus datasets for bench/partial_labels.py and bench/finetune.py, and the CLI calls they share.

The shared MSD copy (``../shared/data/Task04_Hippocampus``, read-only) is copied and converted once per work folder
(``nnUNetv2_convert_MSD_dataset``); derived raw datasets are written from its cases with a label or image function.
Every training and prediction runs through the real commands (``nnUNetv2_*``), as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NNSEG_SHARED", REPO.parent / "shared"))
BIN = Path(os.environ.get("BIN", REPO / ".venv" / "bin"))


def roots(work: Path) -> dict[str, str]:
    env = {"nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
           "nnUNet_results": str(work / "results")}
    for v in env.values():
        Path(v).mkdir(parents=True, exist_ok=True)
    return env


def run(args: Sequence[str], env: dict[str, str], *, quiet: bool = True) -> float:
    """Run an nnseg command (``nnUNetv2_train ...``) with the work folder's roots; returns its wall time."""
    start = time.perf_counter()
    full = {**os.environ, **env, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([str(BIN / args[0]), *args[1:]], env=full, text=True,
                         stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)
    if out.returncode != 0:
        sys.stderr.write((out.stdout or "")[-4000:])
        raise SystemExit(f"failed: {' '.join(args)}")
    return time.perf_counter() - start


def hippocampus(work: Path, env: dict[str, str]) -> Path:
    """``raw/Dataset004_Hippocampus`` converted from the shared MSD copy (once per work folder)."""
    raw = Path(env["nnUNet_raw"]) / "Dataset004_Hippocampus"
    if not (raw / "dataset.json").is_file():
        task = work / "Task04_Hippocampus"
        shutil.rmtree(task, ignore_errors=True)
        shutil.copytree(SHARED / "data" / "Task04_Hippocampus", task)
        for p in task.rglob("*"):
            p.chmod(p.stat().st_mode | 0o200)
        run(["nnUNetv2_convert_MSD_dataset", "-i", str(task)], env)
    return raw


def case_ids(raw: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))


def write_dataset(source: Path, target: Path, cases: Sequence[str], *, labels: dict[str, int],
                  label_fn: Callable[[str, np.ndarray], np.ndarray] | None = None,
                  extra_channels: Sequence[tuple[str, Callable[[np.ndarray], np.ndarray]]] = (),
                  extra_json: dict[str, Any] | None = None) -> Path:
    """A raw dataset of ``cases`` from ``source``: labels through ``label_fn(case, seg)``, channel 0 copied and
    ``extra_channels`` ``(name, fn(image))`` appended."""
    if (target / "dataset.json").is_file():
        return target
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for case in cases:
        image_file = source / "imagesTr" / f"{case}_0000.nii.gz"
        shutil.copy(image_file, target / "imagesTr" / image_file.name)
        img = nib.load(image_file)
        for i, (_, fn) in enumerate(extra_channels, start=1):
            data = fn(np.asarray(img.dataobj, dtype=np.float32))
            nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine, img.header),
                     target / "imagesTr" / f"{case}_{i:04d}.nii.gz")
        seg_img = nib.load(source / "labelsTr" / f"{case}.nii.gz")
        seg = np.asarray(seg_img.dataobj).astype(np.uint8)
        if label_fn is not None:
            seg = label_fn(case, seg)
        out = nib.Nifti1Image(seg.astype(np.uint8), seg_img.affine, seg_img.header)
        out.set_data_dtype(np.uint8)
        nib.save(out, target / "labelsTr" / f"{case}.nii.gz")
    channels = {"0": "MRI", **{str(i): name for i, (name, _) in enumerate(extra_channels, start=1)}}
    spec = {"channel_names": channels, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz",
            **(extra_json or {})}
    (target / "dataset.json").write_text(json.dumps(spec, indent=4))
    return target


def test_images(source: Path, target: Path, cases: Sequence[str]) -> Path:
    """``imagesTs``-style folder of ``cases`` (channel 0) for nnUNetv2_predict."""
    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        shutil.copy(source / "imagesTr" / f"{case}_0000.nii.gz", target / f"{case}_0000.nii.gz")
    return target


def dice_per_label(ref_folder: Path, pred_folder: Path, labels: Sequence[int]) -> list[float]:
    """Mean Dice per label over the predicted cases (nnseg's evaluation, nnU-Net's rules)."""
    from nnseg.metrics.evaluate import evaluate_folder_simple

    summary = evaluate_folder_simple(ref_folder, pred_folder, labels=list(labels), num_processes=1,
                                     output_file=pred_folder / "summary.json")
    return [float(summary["mean"][label]["Dice"]) for label in labels]
