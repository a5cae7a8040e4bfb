"""Prediction wall time and peak memory on nnU-Net's golden Hippocampus model (10 cases, CPU), vs nnU-Net's 47.1 s.

Each run is a fresh process (as nnU-Net's timing: interpreter start, imports and model loading included) that
predicts the 10 golden cases with mirroring TTA (``--save_probabilities`` as nnU-Net ran it). Printed per precision:
process wall time, process CPU time (divided by the core count: the wall time an otherwise idle machine would
show, since the measured machine is shared), peak RSS, time inside ``predict()``, the network's share and the share
outside the network (reading, preprocessing, export, writing, model loading). Targets: non-network share <= 15 %;
total <= 0.4 x 47.1 s with the default precision, <= 0.6 x 47.1 s in fp32.

The onnxruntime backend (``nnseg export-onnx`` + ``--backend onnxruntime``, fp32) runs last, and its CPU time is printed
next to torch fp32's (``--no_onnx`` skips it).

``--nnunet`` then runs ``nnUNetv2_predict`` of nnseg and of nnU-Net v2 side by side on three sets (the golden
Hippocampus model with TTA, 6 two-channel synthetic cases with TTA, a 118-class medium CT; ``bench/predict_nnunet.py``)
and prints, per set and tool, wall, CPU time and peak RSS (process tree, and the largest single process) with the
ratios; targets: nnseg <= 1.0x nnU-Net's peak RSS at <= 0.35x its wall. nnU-Net comes from ``--nnunet-site`` (default
``../main/.site/nnunet``: ``bench/gpu_compare.sh online-install``), never as a dependency.

Usage: python bench/predict.py [--precision auto fp32] [--disable_tta] [--cases 10] [--no_onnx]
       python bench/predict.py --nnunet [--sets hippocampus two_channel ct118] [--nnunet-site DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NNSEG_SHARED", REPO.parent / "shared"))
MODEL_DIR = SHARED / "reference" / "expected" / "Dataset004_Hippocampus" / "model"
IMAGES = SHARED / "data" / "Task04_Hippocampus" / "imagesTr"
MODEL = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2"
NNUNET_S = {"tta": 47.1, "notta": 17.8}
TARGET = {"auto": 0.4, "fp32": 0.6}


def child(model: str, images: str, out: str, precision: str, tta: bool, backend: str = "torch") -> None:
    """Runs in the measured process: predict and print the timing report as JSON."""
    from nnseg.predictions.inference.onnx_backend import load_predictor
    from nnseg.predictions.run.predict import predict

    loaded = load_predictor(Path(model), backend=backend, folds=(0,), device="cpu", precision=precision, use_tta=tta)
    report = predict(loaded, Path(images), Path(out), save_probabilities=True, num_processes_preprocessing=1,
                     num_processes_export=1, progress=False)
    print(json.dumps({"predict_s": report.wall_s, "network_s": report.network_s, "cases": len(report.written),
                      "read_s": sum(t.read for t in report.timings), "export_s": sum(t.export for t in report.timings),
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))


def run_one(root: Path, precision: str, tta: bool, backend: str = "torch") -> dict[str, float]:
    out = root / f"out_{precision}_{tta}_{backend}"
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); import predict as b; "
            f"b.child({str(root / 'results' / MODEL)!r}, {str(root / 'in')!r}, {str(out)!r}, {precision!r}, {tta}, "
            f"{backend!r})")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"prediction failed:\n{done.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    result.update(wall_s=wall, cpu_s=cpu)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["auto", "fp32"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--no_onnx", action="store_true", help="skip the onnxruntime run")
    parser.add_argument("--nnunet", action="store_true", help="only the side-by-side runs with nnU-Net v2")
    parser.add_argument("--sets", nargs="+", default=["hippocampus", "two_channel", "ct118"],
                        choices=["hippocampus", "two_channel", "ct118"])
    parser.add_argument("--nnunet-site", dest="nnunet_site", type=Path, default=REPO.parent / "main" / ".site" / "nnunet")
    args = parser.parse_args()
    if args.nnunet:
        return _side_by_side(args.sets, args.nnunet_site)
    from nnseg.devices import cpu_has_native_bf16
    from nnseg.sharing.install import install_model_zip

    tta = not args.disable_tta
    cores = os.cpu_count() or 1
    ref = NNUNET_S["tta" if tta else "notta"]
    cases = (MODEL_DIR / "cases.txt").read_text().split()[: args.cases]
    from cpuinfo import cpu_line  # bench/cpuinfo.py

    print(f"{cpu_line()}; CPU native bf16: {cpu_has_native_bf16()}; torch threads: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        install_model_zip(MODEL_DIR / "model.zip", root / "results")
        (root / "in").mkdir()
        for case in cases:
            (root / "in" / f"{case}_0000.nii.gz").symlink_to(IMAGES / f"{case}.nii.gz")
        cpu_s: dict[str, float] = {}
        for precision in args.precision:
            r = run_one(root, precision, tta)
            cpu_s[precision] = r["cpu_s"]
            outside = 1 - r["network_s"] / r["wall_s"]
            outside_predict = 1 - r["network_s"] / r["predict_s"]
            target = TARGET.get(precision)
            goal = f" (target <= {target} x {ref} s = {target * ref:.1f} s)" if target and len(cases) == 10 else ""
            print(f"{precision:>5} {'TTA' if tta else 'no TTA'}: {r['cases']} cases, process wall {r['wall_s']:.1f} s = "
                  f"{r['wall_s'] / ref:.2f} x nnU-Net{goal}; peak RSS {r['peak_rss_gb']:.2f} GB; inside predict() "
                  f"{r['predict_s']:.1f} s, network {r['network_s']:.1f} s; outside the network: {outside:.1%} of the "
                  f"process, {outside_predict:.1%} of predict() (read+preprocess {r['read_s']:.2f} s, export "
                  f"{r['export_s']:.2f} s, overlapped); CPU time {r['cpu_s']:.1f} s = {r['cpu_s'] / cores:.1f} s on "
                  f"{cores} idle cores")
        if not args.no_onnx:
            _onnx_line(root, tta, cores, cpu_s.get("fp32"))
    return 0


def _side_by_side(sets: list[str], nnunet_site: Path) -> int:
    """``--nnunet``: both tools' ``nnUNetv2_predict`` on each set (bench/predict_nnunet.py), one line per set."""
    from cpuinfo import cpu_line  # bench/cpuinfo.py
    from predict_nnunet import side_by_side

    if not (nnunet_site / "nnunetv2").is_dir():
        raise SystemExit(f"no nnunetv2 in {nnunet_site}: install it there (bench/gpu_compare.sh online-install) or "
                         "pass --nnunet-site")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpu_line()}; load average {load:.1f} at the start (CPU time is the figure to compare on a shared machine)")
    with tempfile.TemporaryDirectory() as tmp:
        side_by_side(Path(tmp), sets=sets, nnunet_site=nnunet_site, cached={})
    return 0


def _onnx_line(root: Path, tta: bool, cores: int, torch_fp32_cpu_s: float | None) -> None:
    """Export the model to ONNX, predict with onnxruntime (fp32) and print its times beside torch fp32's."""
    from nnseg.predictions.inference.onnx_backend import export_onnx

    export_onnx(root / "results" / MODEL, folds=(0,))
    r = run_one(root, "fp32", tta, backend="onnxruntime")
    beside = f" (torch fp32: CPU time {torch_fp32_cpu_s:.1f} s)" if torch_fp32_cpu_s is not None else ""
    print(f"onnxruntime fp32 {'TTA' if tta else 'no TTA'}: {r['cases']} cases, process wall {r['wall_s']:.1f} s; "
          f"network {r['network_s']:.1f} s; CPU time {r['cpu_s']:.1f} s = {r['cpu_s'] / cores:.1f} s on {cores} idle "
          f"cores{beside}; peak RSS {r['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    sys.exit(main())
