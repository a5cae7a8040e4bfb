"""Whole-body CT prediction in bounded memory (issue 13): a 118-class model on a 512x512x400 CT, on the CPU.

Builds, under ``--workdir``:

* a real nnU-Net model folder ``nnUNet_results/Dataset950_BigCT/nnUNetTrainer__nnUNetPlans__3d_fullres``: plans at
  1.5 mm isotropic (CT normalisation, the default spline resampling of the data and order-1 resampling of the
  probabilities), a small 3-stage U-Net with 118 outputs (patch 32x96x96), trained for ``--iterations`` Adam steps on
  a synthetic 1.5 mm phantom whose 117 "organs" are ellipsoids;
* ``imagesTs/ct_0000.nii.gz``: the same phantom sampled on a 512x512x400 grid at 0.8x0.8x1.0 mm, in HU (int16).

Then it runs the real entry point (``nnseg predict ... -device cpu --disable_tta --verbose``) in a child
process, samples the RSS of the child's process tree every 0.1 s, and prints the wall time, the peak RSS, the time
after the network (from the ``--verbose`` line) and its share of the wall, with the CPU model.

Example:
    python bench/big_volume.py --workdir /tmp/bigct                       # labels only
    python bench/big_volume.py --workdir /tmp/bigct --save_probabilities  # also the 118-class CASE.npz
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

NUM_CLASSES = 118
SHAPE = (400, 512, 512)           # array order (z, y, x) as SimpleITK reads it
SPACING = (1.0, 0.8, 0.8)         # mm, same order
TARGET = 1.5
DATASET = "Dataset950_BigCT"
MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def organs(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, int, float]]:
    """117 ellipsoids (centre mm, radii mm, label, HU) inside a 400 x 409.6 x 409.6 mm body."""
    rng = np.random.default_rng(seed)
    extent = np.array([s * p for s, p in zip(SHAPE, SPACING)])
    out = []
    for label in range(1, NUM_CLASSES):
        centre = extent * rng.uniform(0.2, 0.8, 3)
        radii = rng.uniform(10, 35, 3)
        out.append((centre, radii, label, float(rng.uniform(-100, 300))))
    return out


def phantom(shape: tuple[int, ...], spacing: tuple[float, ...], *, labels: bool) -> np.ndarray:
    """HU image (int16) or label map (uint8) of the phantom on a grid, built slab by slab along z."""
    out = np.empty(shape, dtype=np.uint8 if labels else np.int16)
    extent = np.array([s * p for s, p in zip(SHAPE, SPACING)])
    yy, xx = np.meshgrid((np.arange(shape[1]) + 0.5) * spacing[1], (np.arange(shape[2]) + 0.5) * spacing[2],
                         indexing="ij")
    body = ((yy - extent[1] / 2) / (extent[1] * 0.42)) ** 2 + ((xx - extent[2] / 2) / (extent[2] * 0.35)) ** 2 < 1
    rng = np.random.default_rng(1)
    items = organs()
    for z in range(shape[0]):
        zc = (z + 0.5) * spacing[0]
        sl = np.zeros(shape[1:], dtype=np.int16) if labels else np.where(body, 40, -1000).astype(np.int16)
        for centre, radii, label, hu in items:
            dz = ((zc - centre[0]) / radii[0]) ** 2
            if dz >= 1:
                continue
            inside = dz + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 < 1
            sl[inside & body] = label if labels else int(hu)
        if not labels:
            sl = sl + rng.normal(0, 15, sl.shape).astype(np.int16)
        out[z] = sl
    return out


def plans_and_dataset() -> tuple[dict, dict]:
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    grid = [int(round(s * p / TARGET)) for s, p in zip(SHAPE, SPACING)]
    cfg = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
           "patch_size": [32, 96, 96], "median_image_size_in_voxels": grid, "spacing": [TARGET] * 3,
           "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
           "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
           "architecture": arch, "batch_dice": False}
    plans = {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": list(SPACING),
             "original_median_shape_after_transp": list(SHAPE), "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "configurations": {"3d_fullres": cfg},
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 400.0, "mean": 100.0, "median": 100.0, "min": -200.0, "percentile_00_5": -150.0,
                 "percentile_99_5": 350.0, "std": 100.0}}}
    labels = {"background": 0, **{f"organ_{i:03d}": i for i in range(1, NUM_CLASSES)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset


def train_model(folder: Path, plans: dict, dataset: dict, iterations: int) -> float:
    """A real model folder: a few Adam steps on 1.5 mm phantom patches; returns the last loss."""
    import torch

    from nnseg.networks import build_network
    from nnseg.predictions.inference.checkpoint import save_checkpoint

    cfg = plans["configurations"]["3d_fullres"]
    grid = tuple(cfg["median_image_size_in_voxels"])
    image = (np.clip(phantom(grid, (TARGET,) * 3, labels=False), -150, 350).astype(np.float32) - 100) / 100
    seg = phantom(grid, (TARGET,) * 3, labels=True)
    torch.manual_seed(0)
    net = build_network(cfg["architecture"], input_channels=1, num_classes=NUM_CLASSES, deep_supervision=False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng, patch, loss = np.random.default_rng(0), cfg["patch_size"], torch.tensor(0.0)
    for _ in range(iterations):
        starts = [[int(rng.integers(0, g - p + 1)) for g, p in zip(grid, patch)] for _ in range(2)]
        sl = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in starts]
        x = torch.from_numpy(np.stack([image[s][None] for s in sl]))
        y = torch.from_numpy(np.stack([seg[s] for s in sl]).astype(np.int64))
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                     "init_args": {"configuration": "3d_fullres", "fold": 0}, "current_epoch": 1,
                     "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return float(loss.detach())


def write_image(path: Path) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(phantom(SHAPE, SPACING, labels=False))
    image.SetSpacing(tuple(float(s) for s in SPACING[::-1]))
    sitk.WriteImage(image, str(path), True)


def watch_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    """Sample the RSS of ``pid`` and its children every 0.1 s; keep the largest sum in ``peak[0]``."""
    import psutil

    try:
        root = psutil.Process(pid)
        while not stop.is_set():
            total = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.1)
    except psutil.Error:
        return


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()} logical CPUs"
    return f"unknown CPU x {os.cpu_count()}"


def run_predict(work: Path, extra: list[str], *, device: str = "cpu") -> dict[str, float]:
    out = work / ("out_probs" if "--save_probabilities" in extra else "out")
    env = {**os.environ, "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_raw": str(work / "raw"),
           "nnUNet_preprocessed": str(work / "preprocessed")}
    script = Path(sys.executable).parent / "nnseg"  # the installed console script (uses PYTHONPATH's nnseg)
    cmd = [str(script), "predict", "-i", str(work / "imagesTs"), "-o", str(out), "-d", DATASET,
           "-c", "3d_fullres", "-f", "0", "-device", device, "--disable_tta", "--verbose", "--disable_progress_bar",
           "-npp", "0", "-nps", "0", *extra]
    peak, stop = [0], threading.Event()
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=watch_rss, args=(child.pid, peak, stop), daemon=True)
    watcher.start()
    cpu0 = os.times()
    log, _ = child.communicate()
    wall = time.perf_counter() - start
    cpu1 = os.times()
    stop.set()
    watcher.join()
    if child.returncode != 0:
        raise SystemExit(f"nnseg predict failed ({child.returncode}):\n{log}")
    m = re.search(r"read\+preprocess ([\d.]+) s, network ([\d.]+) s, export ([\d.]+) s(?: \(([\d.]+) s after)?", log)
    if m is None:
        raise SystemExit(f"no timing line in the output:\n{log}")
    read, network, export = (float(m.group(i)) for i in (1, 2, 3))
    after = float(m.group(4)) if m.group(4) else export
    return {"wall": wall, "cpu": (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system),
            "peak": peak[0] / 2**30, "read": read, "network": network, "export": export, "after": after,
            "out_bytes": sum(f.stat().st_size for f in out.iterdir()) / 2**30, "log": log}  # type: ignore[dict-item]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nnseg_big_volume"))
    parser.add_argument("--iterations", type=int, default=20, help="training steps of the 118-class model [20]")
    parser.add_argument("--save_probabilities", action="store_true", help="also write the 118-class CASE.npz")
    parser.add_argument("--max-memory", dest="max_memory", default=None, help="passed to nnseg predict")
    parser.add_argument("--keep_outputs", action="store_true", help="keep the predictions (the .npz is ~35 GB)")
    parser.add_argument("--device", default="cpu", help="device of the prediction: cpu, cuda or mps [cpu] "
                        "(bench/gpu_compare.py runs it on the GPU)")
    args = parser.parse_args()
    work = args.workdir
    folder = work / "nnUNet_results" / DATASET / MODEL
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        plans, dataset = plans_and_dataset()
        t = time.perf_counter()
        loss = train_model(folder, plans, dataset, args.iterations)
        print(f"model: {NUM_CLASSES} classes, {args.iterations} training steps (loss {loss:.2f}) in "
              f"{time.perf_counter() - t:.0f} s -> {folder}")
    image = work / "imagesTs" / "ct_0000.nii.gz"
    if not image.is_file():
        write_image(image)
    extra = (["--save_probabilities"] if args.save_probabilities else []) + (
        ["--max-memory", args.max_memory] if args.max_memory else [])
    r = run_predict(work, extra, device=args.device)
    print(f"CPU: {cpu_model()} (shared machine: other jobs may run)")
    print(f"image {SHAPE[::-1]} (x, y, z) at {SPACING[::-1]} mm, {NUM_CLASSES} classes, plans at {TARGET} mm"
          f"{', --save_probabilities' if args.save_probabilities else ''}")
    print(f"wall {r['wall']:.1f} s (CPU {r['cpu']:.1f} s), peak RSS of the process tree {r['peak']:.2f} GiB")
    print(f"read+preprocess {r['read']:.1f} s, network {r['network']:.1f} s, export {r['export']:.1f} s "
          f"(interleaved with the network), after the network {r['after']:.1f} s = {100 * r['after'] / r['wall']:.1f} % "
          f"of the wall; outputs {r['out_bytes']:.2f} GiB")
    if not args.keep_outputs:
        for f in (work / ("out_probs" if args.save_probabilities else "out")).glob("ct*"):
            f.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
