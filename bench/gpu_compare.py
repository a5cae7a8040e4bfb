"""nnseg against nnU-Net v2 2.8.1 on the same machine, in one run: training speed, GPU use, prediction, Dice.

What it does (``bench/gpu_compare.sh`` sets up the Python paths and calls this):

1. writes a synthetic 3D dataset with ``nnseg demo-data`` at a realistic size (default 12 training cases and 5 test
   cases of 160^3 voxels, 1 mm: nnU-Net's planner gives 3d_fullres a 128^3 patch with batch size 2 for it), and plans
   and preprocesses it with both tools (2d and 3d_fullres, each tool its own folders; the plans must agree);
2. trains fold 0 of 3d_fullres and 2d with each tool for ``--epochs`` epochs of ``--iterations`` iterations (one
   validation iteration per epoch). The first epoch is the warm-up (compilation, cudnn autotuning, worker start); the
   seconds per iteration are those of the later epochs, read from the epoch timestamps both tools store in
   ``checkpoint_final.pth`` (so they include each tool's per-epoch overhead). Variants: each tool at its defaults
   (nnU-Net: ``nnUNet_n_proc_DA=12`` augmentation processes, compile as it decides; nnseg: batched augmentation on the
   training device); nnseg limited to 4 CPU cores (``taskset`` + 4 threads); nnU-Net with 4 augmentation processes
   (the number of CPU workers equal);
3. samples GPU utilisation and memory with NVML every 100 ms during each training and reports the mean utilisation
   over the measured epochs and the peak memory above the idle level;
4. predicts the 5 test cases with mirroring TTA with each tool's default 3d_fullres model (whole command, model
   loading included, per case) and the large-CT case of ``bench/big_volume.py`` when that script is present;
5. reads the mean foreground Dice of each tool's final validation (same split: both use nnU-Net's seeded 5-fold
   split), so speed is not bought with accuracy.

It prints one side-by-side table and writes every figure to ``--out`` (JSON). ``--tiny -device cpu`` runs the whole
thing in a few minutes on a laptop CPU (small cases, 2 iterations per epoch: the figures then only show that the
script works). nnU-Net is imported from ``--nnunet-site`` only (a separate folder on ``PYTHONPATH`` of nnU-Net's
processes): it is a comparison tool here, never a dependency of nnseg.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET_ID, DATASET = 950, "Dataset950_GpuBench"

# nnU-Net trainer used by the bench: nnU-Net's own recipe with only the schedule shortened (what the golden model's
# nnUNetTrainer_bench does). It is written into the top folder of nnU-Net's trainers in --nnunet-site (the bench's own
# copy of nnU-Net), where nnU-Net's class search looks first: through nnUNet_extTrainer nnU-Net would first import
# every trainer module it ships (and with them timm and torchvision).
BENCH_TRAINER = '''
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_gpubench(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ["NNSEG_BENCH_EPOCHS"])
        self.num_iterations_per_epoch = int(os.environ["NNSEG_BENCH_ITERATIONS"])
        self.num_val_iterations_per_epoch = 1
'''


@dataclass
class TrainFigures:
    tool: str
    configuration: str
    variant: str
    s_per_iteration: float | None = None
    iterations_measured: int = 0
    wall_s: float | None = None
    gpu_util_mean: float | None = None
    gpu_mem_peak_gb: float | None = None
    dice: float | None = None
    patch_size: list[int] = field(default_factory=list)
    batch_size: int | None = None
    error: str | None = None


class GpuSampler:
    """NVML samples (time, utilisation %, used bytes) of one GPU in a thread; empty on machines without NVML."""

    def __init__(self, index: int = 0, period: float = 0.1) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._period = period
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # noqa: BLE001 - no NVML (CPU run): no samples
            self._nvml = self._handle = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self._handle is not None:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self.samples.append((time.time(), float(util), float(used)))
            time.sleep(self._period)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean_util(self, start: float, end: float) -> float | None:
        values = [u for t, u, _ in self.samples if start <= t <= end]
        return round(sum(values) / len(values), 1) if values else None

    def peak_gb(self, idle_bytes: float) -> float | None:
        return round((max(m for _, _, m in self.samples) - idle_bytes) / 2**30, 2) if self.samples else None


def idle_gpu_bytes() -> float:
    with GpuSampler() as s:
        time.sleep(0.3)
    return min((m for _, _, m in s.samples), default=0.0)


def run(cmd: list[str], *, env: dict[str, str], log: Path, check: bool = True) -> float:
    """Run ``cmd`` with its output to ``log``; return its wall time."""
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if check and rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed (exit {rc}); end of {log}:\n{tail}")
    return time.perf_counter() - start


class Tools:
    """Command lines and environments of both tools under one work folder."""

    def __init__(self, work: Path, *, nnunet_site: Path | None, device: str) -> None:
        self.work, self.nnunet_site, self.device = work, nnunet_site, device
        self.raw = work / "raw"

    def env(self, tool: str, variant: str = "default", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
        base = self.work / tool
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(base / "preprocessed"),
                   nnUNet_results=str(base / f"results_{variant}"), PYTHONUNBUFFERED="1")
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if tool == "nnunet":
            paths = [str(self.nnunet_site)] + [p for p in paths if Path(p).resolve() != (REPO / "src").resolve()]
        else:
            paths = [str(REPO / "src")] + paths
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(extra)
        return env

    def nnseg(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "nnseg.cli.main", *args]

    def nnunet(self, entry: str, *args: str) -> list[str]:
        module, function = {"plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                                                    "plan_and_preprocess_entry"),
                            "train": ("nnunetv2.run.run_training", "run_training_entry"),
                            "predict": ("nnunetv2.inference.predict_from_raw_data", "predict_entry_point")}[entry]
        code = f"import sys; from {module} import {function}; sys.argv[0] = 'nnUNetv2_{entry}'; {function}()"
        return [sys.executable, "-c", code, *args]


def prepare_data(tools: Tools, *, cases: int, shape: list[int], np_: int) -> dict[str, float]:
    if (tools.raw / DATASET / "dataset.json").is_file():
        shutil.rmtree(tools.raw / DATASET)
    tools.raw.mkdir(parents=True, exist_ok=True)
    run(tools.nnseg("demo-data", str(tools.raw / DATASET), "--cases", str(cases), "--test-cases", "5",
                    "--shape", *map(str, shape)), env=tools.env("nnseg"), log=tools.work / "demo_data.log")
    if tools.nnunet_site is not None:
        (tools.nnunet_site / "nnunetv2" / "training" / "nnUNetTrainer" / "nnUNetTrainer_gpubench.py").write_text(
            BENCH_TRAINER)
    walls = {"nnseg": run(tools.nnseg("plan-and-preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres",
                                      "-np", str(np_), str(np_), "-npfp", str(np_)),
                          env=tools.env("nnseg"), log=tools.work / "nnseg_preprocess.log")}
    if tools.nnunet_site is not None:
        walls["nnunet"] = run(tools.nnunet("plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres",
                                           "-np", str(np_), str(np_), "-npfp", str(np_)),
                              env=tools.env("nnunet"), log=tools.work / "nnunet_preprocess.log")
    return walls


def plans_of(tools: Tools, tool: str, configuration: str) -> dict:
    plans = json.loads((tools.work / tool / "preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    return plans["configurations"][configuration]


def _checkpoint_logging(path: Path) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from nnseg.training.checkpoint import load_checkpoint

    return dict(load_checkpoint(path)["logging"])


def _fold_folder(tools: Tools, tool: str, variant: str, configuration: str, epochs: int) -> Path:
    trainer = "nnUNetTrainer_gpubench" if tool == "nnunet" else f"nnUNetTrainer_{epochs}epochs"
    return (tools.work / tool / f"results_{variant}" / DATASET / f"{trainer}__nnUNetPlans__{configuration}"
            / "fold_0")


def train_command(tools: Tools, tool: str, configuration: str, *, epochs: int, iterations: int,
                  cpus: int | None) -> list[str]:
    if tool == "nnunet":
        cmd = tools.nnunet("train", str(DATASET_ID), configuration, "0", "-tr", "nnUNetTrainer_gpubench",
                           "-device", tools.device)
    else:
        cmd = tools.nnseg("train", str(DATASET_ID), configuration, "0", "--epochs", str(epochs),
                          "--iterations-per-epoch", str(iterations), "--set", "val_iterations_per_epoch=1",
                          "-device", tools.device)
    if cpus is not None and shutil.which("taskset") and (os.cpu_count() or 1) > cpus:
        cmd = ["taskset", "-c", f"0-{cpus - 1}", *cmd]
    return cmd


def train_variant(tools: Tools, tool: str, configuration: str, variant: str, *, epochs: int, iterations: int,
                  da_workers: int | None, cpus: int | None) -> TrainFigures:
    """One training run of one tool; figures from its checkpoint's epoch timestamps and the NVML samples."""
    fig = TrainFigures(tool, configuration, variant)
    cfg = plans_of(tools, tool, configuration)
    fig.patch_size, fig.batch_size = list(cfg["patch_size"]), int(cfg["batch_size"])
    extra = {"NNSEG_BENCH_EPOCHS": str(epochs), "NNSEG_BENCH_ITERATIONS": str(iterations)}
    if da_workers is not None:
        extra["nnUNet_n_proc_DA"] = str(da_workers)
    if cpus is not None:
        extra.update(OMP_NUM_THREADS=str(cpus), MKL_NUM_THREADS=str(cpus))
    env = tools.env(tool, variant, **extra)
    idle = idle_gpu_bytes()
    log = tools.work / f"train_{tool}_{configuration}_{variant}.log"
    try:
        with GpuSampler() as sampler:
            fig.wall_s = round(run(train_command(tools, tool, configuration, epochs=epochs, iterations=iterations,
                                                 cpus=cpus), env=env, log=log), 1)
    except RuntimeError as e:
        fig.error = str(e).splitlines()[0]
        return fig
    folder = _fold_folder(tools, tool, variant, configuration, epochs)
    logging = _checkpoint_logging(folder / "checkpoint_final.pth")
    starts, ends = logging["epoch_start_timestamps"], logging["epoch_end_timestamps"]
    fig.iterations_measured = iterations * (len(ends) - 1)
    if fig.iterations_measured:
        fig.s_per_iteration = round((float(ends[-1]) - float(starts[1])) / fig.iterations_measured, 4)
        fig.gpu_util_mean = sampler.mean_util(float(starts[1]), float(ends[-1]))
    fig.gpu_mem_peak_gb = sampler.peak_gb(idle)
    summary = folder / "validation" / "summary.json"
    if summary.is_file():
        fig.dice = round(float(json.loads(summary.read_text())["foreground_mean"]["Dice"]), 4)
    return fig


def predict_tool(tools: Tools, tool: str, *, epochs: int) -> dict[str, float | str]:
    """Predict the 5 test cases with TTA (whole command, model loading included)."""
    images, out = tools.raw / DATASET / "imagesTs", tools.work / tool / "predictions"
    shutil.rmtree(out, ignore_errors=True)
    common = ["-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0",
              "-device", tools.device]
    if tool == "nnunet":
        cmd = tools.nnunet("predict", *common, "-tr", "nnUNetTrainer_gpubench")
    else:
        cmd = tools.nnseg("predict", *common, "-tr", f"nnUNetTrainer_{epochs}epochs")
    cases = len(list(images.glob("*_0000.nii.gz")))
    try:
        wall = run(cmd, env=tools.env(tool), log=tools.work / f"predict_{tool}.log")
    except RuntimeError as e:
        return {"error": str(e).splitlines()[0]}
    return {"cases": cases, "wall_s": round(wall, 2), "s_per_case": round(wall / cases, 2)}


def predictions_agreement(tools: Tools) -> float | None:
    """Mean foreground Dice between nnseg's and nnU-Net's test-case predictions."""
    import numpy as np
    import SimpleITK as sitk

    a_dir, b_dir = tools.work / "nnseg" / "predictions", tools.work / "nnunet" / "predictions"
    dices = []
    for a in sorted(a_dir.glob("*.nii.gz")):
        if not (b_dir / a.name).is_file():
            return None
        x, y = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (a, b_dir / a.name))
        for label in range(1, int(max(x.max(), y.max())) + 1):
            denom = (x == label).sum() + (y == label).sum()
            if denom:
                dices.append(2 * ((x == label) & (y == label)).sum() / denom)
    return round(float(np.mean(dices)), 4) if dices else None


def big_volume(tools: Tools) -> str | None:
    script = REPO / "bench" / "big_volume.py"
    if not script.is_file():
        return None
    log = tools.work / "big_volume.log"
    run([sys.executable, str(script), "--device", tools.device], env=tools.env("nnseg"), log=log, check=False)
    return log.read_text(errors="replace")[-2000:]


def machine(device: str) -> dict[str, str]:
    info = {"python": platform.python_version(), "cpus": str(os.cpu_count()), "device": device}
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        info["cpu"] = model
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or platform.machine()
    if device.startswith("cuda"):
        smi = shutil.which("nvidia-smi")
        if smi:
            info["gpu"] = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                         capture_output=True, text=True, check=False).stdout.strip()
    return info


def variants(*, tiny: bool, with_nnunet: bool) -> list[tuple[str, str, str, int | None, int | None]]:
    """(tool, configuration, variant, nnU-Net augmentation processes, CPU cores) of every training run."""
    runs = [("nnseg", "3d_fullres", "default", None, None), ("nnseg", "3d_fullres", "4cpu", None, 4),
            ("nnseg", "2d", "default", None, None)]
    if with_nnunet:
        da = 2 if tiny else 12
        runs += [("nnunet", "3d_fullres", "default", da, None), ("nnunet", "3d_fullres", "4cpu", 4, 4),
                 ("nnunet", "2d", "default", da, None)]
    return runs


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def print_table(figures: list[TrainFigures], prep: dict[str, float], pred: dict[str, dict]) -> None:
    print("\ntraining (fold 0; s/it over the epochs after the first; GPU util = mean over those epochs)")
    print(f"{'tool':<7}{'config':<12}{'variant':<9}{'patch x batch':<20}{'s/it':>8}{'GPU util %':>12}"
          f"{'GPU mem GB':>12}{'Dice':>8}{'wall s':>9}")
    for f in figures:
        pb = f"{'x'.join(map(str, f.patch_size))} x {f.batch_size}"
        print(f"{f.tool:<7}{f.configuration:<12}{f.variant:<9}{pb:<20}{_fmt(f.s_per_iteration):>8}"
              f"{_fmt(f.gpu_util_mean):>12}{_fmt(f.gpu_mem_peak_gb):>12}{_fmt(f.dice):>8}{_fmt(f.wall_s):>9}"
              + (f"  ERROR {f.error}" if f.error else ""))
    by = {(f.tool, f.configuration, f.variant): f for f in figures}
    for cfg in ("3d_fullres", "2d"):
        a, b = by.get(("nnseg", cfg, "default")), by.get(("nnunet", cfg, "default"))
        if a and b and a.s_per_iteration and b.s_per_iteration:
            print(f"{cfg}: nnseg/nnU-Net s/it at defaults = {a.s_per_iteration / b.s_per_iteration:.2f} "
                  f"(target <= 0.6); Dice difference {_fmt(None if a.dice is None or b.dice is None else round(a.dice - b.dice, 4))}"
                  " (target within 0.01)")
    a4, b12 = by.get(("nnseg", "3d_fullres", "4cpu")), by.get(("nnunet", "3d_fullres", "default"))
    if a4 and b12 and a4.s_per_iteration and b12.s_per_iteration:
        print(f"3d_fullres: nnseg on 4 CPU cores / nnU-Net with 12 DA processes = "
              f"{a4.s_per_iteration / b12.s_per_iteration:.2f} (target <= 1)")
    print(f"\nplan_and_preprocess wall s: {prep}")
    print(f"prediction of the test cases with TTA: {pred}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="work folder (data, both tools' folders, logs)")
    p.add_argument("-device", "--device", default="cuda", help="cuda or cpu [cuda]")
    p.add_argument("--nnunet-site", type=Path, default=None, help="folder holding nnunetv2 2.8.1 and its needs; "
                   "without it only nnseg runs")
    p.add_argument("--tiny", action="store_true", help="small cases and 2 iterations per epoch (checks the script)")
    p.add_argument("--cases", type=int, default=None, help="training cases [12; tiny 6]")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="case shape [160 160 160; tiny 40 48 48]")
    p.add_argument("--epochs", type=int, default=None, help="epochs, the first is warm-up [3; tiny 2]")
    p.add_argument("--iterations", type=int, default=None, help="iterations per epoch [60; tiny 2]")
    p.add_argument("-np", dest="np_", type=int, default=min(8, os.cpu_count() or 1), help="preprocessing processes")
    p.add_argument("--out", type=Path, default=None, help="JSON file for every figure")
    a = p.parse_args(argv)
    cases, shape = a.cases or (6 if a.tiny else 12), a.shape or ([40, 48, 48] if a.tiny else [160, 160, 160])
    epochs, iterations = a.epochs or (2 if a.tiny else 3), a.iterations or (2 if a.tiny else 60)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.nnunet_site is not None and not (a.nnunet_site / "nnunetv2").is_dir():
        print(f"note: no nnunetv2 in {a.nnunet_site} (bench/gpu_compare.sh install/online-install): nnseg only")
        a.nnunet_site = None
    tools = Tools(a.work.resolve(), nnunet_site=a.nnunet_site.resolve() if a.nnunet_site else None, device=a.device)
    info = machine(a.device)
    print(f"machine: {info}", flush=True)
    prep = prepare_data(tools, cases=cases, shape=shape, np_=a.np_)
    figures = []
    for tool, cfg, variant, da, cpus in variants(tiny=a.tiny, with_nnunet=tools.nnunet_site is not None):
        figures.append(train_variant(tools, tool, cfg, variant, epochs=epochs, iterations=iterations,
                                     da_workers=da, cpus=cpus))
        print(f"  {asdict(figures[-1])}", flush=True)
    pred = {"nnseg": predict_tool(tools, "nnseg", epochs=epochs)}
    if tools.nnunet_site is not None:
        pred["nnunet"] = predict_tool(tools, "nnunet", epochs=epochs)
        pred["label_agreement_dice"] = predictions_agreement(tools)  # type: ignore[assignment]
    big = big_volume(tools)
    print_table(figures, prep, pred)
    if big:
        print(f"\nbench/big_volume.py ({a.device}):\n{big}")
    if a.out:
        a.out.write_text(json.dumps({"machine": info, "shape": shape, "cases": cases, "epochs": epochs,
                                     "iterations": iterations, "preprocess_wall_s": prep,
                                     "training": [asdict(f) for f in figures], "prediction": pred,
                                     "big_volume_tail": big}, indent=2))
    return 1 if any(f.error for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
