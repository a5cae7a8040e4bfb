"""Whole-body CT through ``nnseg serve`` within the budget ``nnseg predict`` needs for it (issue 26).

Uses the 118-class model and the 512x512x400 CT phantom of ``bench/big_volume.py`` (built under ``--workdir`` if
missing, shared with that bench). Prints the memory plan's estimates for the case (one-shot path vs the bounded path
the budget leaves), starts the real server (``nnseg serve --max-memory GB``, a subprocess on 127.0.0.1, a free port),
sends the CT to ``POST /v1/models/{model}/predict`` and samples the RSS of the server's process tree every 0.1 s:
printed are the wall of the request, the server's peak RSS (and at rest before the request), the budget and the
CPU line (``bench/cpuinfo.py``). With ``--compare_cli`` it also runs ``nnseg predict --max-memory GB`` on the same
case (wall, peak RSS) and checks that the two label maps are equal voxel for voxel.

Example:
    python bench/serve_big_volume.py --workdir /tmp/nnseg_big_volume --max-memory 6 --compare_cli
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import big_volume as bv  # noqa: E402  (the model, the phantom and the RSS sampler of the CLI bench)
from cpuinfo import cpu_line  # noqa: E402

GIB = 2**30


def ensure_inputs(work: Path, iterations: int) -> tuple[Path, Path]:
    """The model folder and the CT of ``bench/big_volume.py`` (built when missing)."""
    folder = work / "nnUNet_results" / bv.DATASET / bv.MODEL
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        plans, dataset = bv.plans_and_dataset()
        bv.train_model(folder, plans, dataset, iterations)
    image = work / "imagesTs" / "ct_0000.nii.gz"
    if not image.is_file():
        bv.write_image(image)
    return folder, image


def estimates(folder: Path, image: Path, budget: str) -> dict[str, object]:
    """The memory plan of the case: the one-shot estimate, and the plan the server's budget gives (``auto``: 10 %
    over the bounded path's smallest estimate, about the least ``nnseg predict`` needs)."""
    from nnseg.predictions.run.bounded import MemoryPolicy, check_case_header
    from nnseg.predictions.inference.predictor import Predictor
    from nnseg.raw.discover import CaseFiles

    def plan(gb: float | None, **kwargs: object) -> object:
        predictor = Predictor.from_model_folder(folder, folds=(0,), device="cpu", use_tta=False, max_memory_gb=gb)
        return check_case_header(predictor, case, MemoryPolicy(int((gb or 2**30) * GIB), "budget", **kwargs))

    case = CaseFiles(identifier="ct", images=(image,), label=None)
    one_shot = plan(None)
    if budget == "auto":  # about what the CLI needs: 10 % over the bounded path's smallest estimate
        smallest = plan(None, slab_rows=1)
        budget = f"{math.ceil(smallest.estimate * 1.1 / GIB * 10) / 10:.1f}"  # type: ignore[attr-defined]
    return {"one_shot": one_shot, "plan": plan(float(budget)), "budget": budget}


def start_server(folder: Path, budget: str, tmp: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "NNSEG_SERVE_TOKEN"}
    env.update(TMPDIR=str(tmp), PYTHONPATH=os.environ.get("PYTHONPATH", str(HERE.parent / "src")))
    cmd = [sys.executable, "-m", "nnseg.cli.main", "serve", "--models", f"bigct={folder}", "--port", "0", "-f", "0",
           "-device", "cpu", "--disable_tta", "--max-memory", budget, "--max_upload_mb", "2048",
           "--request_timeout_s", "120", "--log_level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("nnseg serve: http://"):
                found.put(line.split()[2].rstrip("/"))

    threading.Thread(target=drain, daemon=True).start()
    try:
        return proc, found.get(timeout=300), lines
    except queue.Empty:
        proc.kill()
        raise SystemExit("the server did not start:\n" + "".join(lines)) from None


def serve_once(folder: Path, image: Path, budget: str, out: Path) -> dict[str, float]:
    """Start the server, send the CT once, stop it; wall of the request and the server's RSS (GiB)."""
    import httpx
    import psutil

    with tempfile.TemporaryDirectory(prefix="serve_big_") as tmp:
        proc, url, lines = start_server(folder, budget, Path(tmp))
        try:
            time.sleep(2.0)
            rest = psutil.Process(proc.pid).memory_info().rss
            peak, stop = [0], threading.Event()
            watcher = threading.Thread(target=bv.watch_rss, args=(proc.pid, peak, stop), daemon=True)
            watcher.start()
            start = time.perf_counter()
            with image.open("rb") as f:
                r = httpx.post(f"{url}/v1/models/bigct/predict", files={"file": (image.name, f)}, timeout=7200)
            wall = time.perf_counter() - start
            stop.set()
            watcher.join()
            if r.status_code != 200:
                raise SystemExit(f"the server answered {r.status_code}: {r.text[:2000]}\n{''.join(lines)[-3000:]}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(r.content)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    return {"wall": wall, "peak": peak[0] / GIB, "rest": rest / GIB}


def same_labels(a: Path, b: Path) -> tuple[bool, float]:
    import numpy as np
    import SimpleITK as sitk

    x, y = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (a, b))
    return bool(x.shape == y.shape and np.array_equal(x, y)), float((x == y).mean()) if x.shape == y.shape else 0.0


def report(args: argparse.Namespace, plans: dict[str, object], served: dict[str, float]) -> None:
    one_shot, plan = plans["one_shot"], plans["plan"]
    print(cpu_line() + " (shared machine: other jobs may run)")
    print(f"case: {bv.SHAPE[::-1]} (x, y, z) CT at {bv.SPACING[::-1]} mm, {bv.NUM_CLASSES} classes, plans at "
          f"{bv.TARGET} mm, no TTA")
    print(f"budget --max-memory {args.max_memory} GB (nnseg serve and nnseg predict alike)")
    print(f"estimate one-shot {one_shot.estimate / GIB:.2f} GB ({one_shot.describe()})")  # type: ignore[attr-defined]
    print(f"estimate as planned: {plan.mode}, {plan.slab_rows} output rows per slab, {plan.samples} samples per call: "  # type: ignore[attr-defined]
          f"{plan.describe()}")  # type: ignore[attr-defined]
    print(f"nnseg serve: request wall {served['wall']:.1f} s, server RSS at rest {served['rest']:.2f} GiB, "
          f"peak {served['peak']:.2f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nnseg_big_volume"))
    parser.add_argument("--out", type=Path, default=None, help="where the label maps go [a temporary folder]")
    parser.add_argument("--iterations", type=int, default=20, help="training steps when the model is built [20]")
    parser.add_argument("--max-memory", dest="max_memory", default="6",
                        help="the budget in GB, or auto: 10 %% over the bounded path's smallest estimate [6]")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink the CT (and its body) by this factor per axis, for a quick run on a busy "
                             "machine; the model is built for it under WORKDIR_x<scale> [1: 512x512x400]")
    parser.add_argument("--compare_cli", action="store_true", help="also run nnseg predict with the same budget")
    args = parser.parse_args()
    if args.scale != 1.0:
        bv.SHAPE = tuple(max(32, int(round(n * args.scale))) for n in bv.SHAPE)
        args.workdir = args.workdir.with_name(f"{args.workdir.name}_x{args.scale:g}")
    folder, image = ensure_inputs(args.workdir, args.iterations)
    out = args.out or Path(tempfile.mkdtemp(prefix="serve_big_out_"))
    plans = estimates(folder, image, args.max_memory)
    args.max_memory = plans["budget"]
    served = serve_once(folder, image, args.max_memory, out / "served" / "ct.nii.gz")
    report(args, plans, served)
    if args.compare_cli:
        cli = bv.run_predict(args.workdir, ["--max-memory", args.max_memory])  # into WORKDIR/out, as big_volume.py
        equal, share = same_labels(out / "served" / "ct.nii.gz", args.workdir / "out" / "ct.nii.gz")
        print(f"nnseg predict --max-memory {args.max_memory}: wall {cli['wall']:.1f} s, peak RSS {cli['peak']:.2f} GiB; "
              f"labels equal to the server's: {equal} ({share:.6f} of the voxels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
