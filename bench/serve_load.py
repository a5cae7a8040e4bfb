"""Load test of ``nnseg serve`` on nnU-Net's golden Hippocampus model (CPU), and warm vs cold latency per case.

1. Cold reference: ``nnUNetv2_predict`` (nnseg's, a fresh process: interpreter, imports, model loading) on ONE case,
   ``--repeats`` times; its wall time is the cold latency. One more cold call predicts all cases: the references.
2. The server is started (subprocess, 127.0.0.1, a free port, a token, its own TMPDIR) with the same options.
3. Warm latency: ``--warm`` requests one after the other (median).
4. Load: ``--requests`` requests from ``--clients`` concurrent clients (the golden cases in turn). Every answer must be
   200 and equal to the reference label map; 429 answers are retried (counted). Printed: requests/s, p50/p95 latency,
   server RSS after warm-up and at the end (sampled every 0.2 s), server CPU time, temporary files left.
5. Shutdown (SIGTERM): the server's TMPDIR must be empty.

Target: warm latency <= 0.3 x the cold call. The machine may be shared: the load average is printed; CPU times too.

Usage: python bench/serve_load.py [--requests 200] [--clients 8] [--tta] [--precision fp32]
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NNSEG_SHARED", REPO.parent / "shared"))
MODEL_DIR = SHARED / "reference" / "expected" / "Dataset004_Hippocampus" / "model"
IMAGES = SHARED / "data" / "Task04_Hippocampus" / "imagesTr"
MODEL = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2"
NAME = "Dataset004_Hippocampus_3d_fullres_bs2"
TOKEN = "bench-token-" + os.urandom(8).hex()


def _flags(args: argparse.Namespace) -> list[str]:
    return ["-f", "0", "-device", "cpu", "--precision", args.precision] + ([] if args.tta else ["--disable_tta"])


def cold_predict(root: Path, images: Path, out: Path, args: argparse.Namespace) -> float:
    """Wall seconds of one ``nnUNetv2_predict`` process (as a user would run it)."""
    script = Path(sys.executable).with_name("nnUNetv2_predict")
    env = {**os.environ, "nnUNet_results": str(root / "results"), "nnUNet_raw": str(root / "raw"),
           "nnUNet_preprocessed": str(root / "pre")}
    start = time.perf_counter()
    subprocess.run([str(script), "-i", str(images), "-o", str(out), "-d", "4", "-c", "3d_fullres_bs2",
                    "-tr", "nnUNetTrainer_bench", *_flags(args), "--disable_progress_bar"], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def start_server(root: Path, tmp: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "TMPDIR": str(tmp), "NNSEG_SERVE_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "nnseg.cli.main", "serve", "--models", str(root / "results" / MODEL),
                             "--port", "0", "--max_queued", str(max(16, args.clients * 2)), "--log_level", "warning",
                             *_flags(args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    found: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("nnseg serve: http://"):
                found.put(line.split()[2].rstrip("/"))
            elif "Traceback" in line or "ERROR" in line:
                print("server:", line.rstrip(), file=sys.stderr)

    threading.Thread(target=drain, daemon=True).start()
    url = found.get(timeout=300)
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(url: str, case: str, uploads: dict[str, bytes], http: httpx.Client) -> tuple[float, int, bytes, int]:
    start, retries = time.perf_counter(), 0
    while True:
        r = http.post(f"{url}/v1/models/{NAME}/predict", files={"file": (f"{case}.nii.gz", uploads[case])})
        if r.status_code != 429:
            return time.perf_counter() - start, r.status_code, r.content, retries
        retries += 1
        time.sleep(0.2)


def same(content: bytes, ref: np.ndarray, tmp: Path) -> bool:
    path = tmp / f"answer_{threading.get_ident()}.nii.gz"
    path.write_bytes(content)
    ok = np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), ref)
    path.unlink()
    return ok


def load(url: str, cases: list[str], uploads: dict[str, bytes], refs: dict[str, np.ndarray], args: argparse.Namespace,
         scratch: Path, pid: int) -> dict[str, object]:
    rss: list[tuple[int, float]] = []
    done = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss.append((done[0], rss_mb(pid)))
            time.sleep(0.2)

    def one(i: int) -> tuple[float, int, bool, int]:
        case = cases[i % len(cases)]
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600) as http:
            latency, status, content, retries = request(url, case, uploads, http)
        done[0] += 1
        return latency, status, status == 200 and same(content, refs[case], scratch), retries

    threading.Thread(target=sample, daemon=True).start()
    cpu0, start = cpu_s(pid), time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - start
    stop.set()
    warm = [m for n, m in rss if n >= max(args.clients * 2, args.requests // 10)]
    return {"results": results, "wall": wall, "cpu": cpu_s(pid) - cpu0, "rss_warm": warm[0] if warm else float("nan"),
            "rss_end": rss_mb(pid), "rss_max": max(m for _, m in rss)}


def report_load(out: dict[str, object], args: argparse.Namespace) -> bool:
    results = out["results"]  # type: ignore[assignment]
    lat = sorted(r[0] for r in results)  # type: ignore[union-attr]
    ok = sum(1 for r in results if r[1] == 200 and r[2])  # type: ignore[union-attr]
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    print(f"load: {args.requests} requests from {args.clients} clients in {out['wall']:.1f} s = "
          f"{args.requests / out['wall']:.2f} requests/s; latency p50 {statistics.median(lat):.2f} s, p95 {p95:.2f} s; "
          f"{ok}/{args.requests} answered 200 with the right label map, {sum(r[3] for r in results)} 429-retries; "
          f"server CPU {out['cpu']:.1f} s")
    growth = out["rss_end"] - out["rss_warm"]  # type: ignore[operator]
    print(f"server RSS: {out['rss_warm']:.0f} MB after warm-up, {out['rss_end']:.0f} MB at the end "
          f"({growth:+.0f} MB), max {out['rss_max']:.0f} MB")
    return ok == args.requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warm", type=int, default=10, help="sequential warm requests for the latency")
    parser.add_argument("--repeats", type=int, default=2, help="cold one-case calls")
    parser.add_argument("--tta", action="store_true", help="mirroring TTA (default off, as --disable_tta)")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    from nnseg.sharing.install import install_model_zip

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()} (shared: timings are noisy)")
    cases = (MODEL_DIR / "cases.txt").read_text().split()
    with tempfile.TemporaryDirectory() as tmp_name:
        root = Path(tmp_name)
        install_model_zip(MODEL_DIR / "model.zip", root / "results")
        for folder, subset in (("one", cases[:1]), ("all", cases)):
            (root / folder).mkdir()
            for case in subset:
                (root / folder / f"{case}_0000.nii.gz").symlink_to(IMAGES / f"{case}.nii.gz")
        cold = [cold_predict(root, root / "one", root / f"cold{i}", args) for i in range(args.repeats)]
        cold_predict(root, root / "all", root / "ref", args)
        refs = {c: sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ref" / f"{c}.nii.gz"))) for c in cases}
        uploads = {c: (IMAGES / f"{c}.nii.gz").read_bytes() for c in cases}
        (root / "server_tmp").mkdir()
        (root / "scratch").mkdir()
        return _serve_part(root, cases, uploads, refs, min(cold), args)


def _serve_part(root: Path, cases: list[str], uploads: dict[str, bytes], refs: dict[str, np.ndarray], cold: float,
                args: argparse.Namespace) -> int:
    started = time.perf_counter()
    proc, url = start_server(root, root / "server_tmp", args)
    print(f"server up in {time.perf_counter() - started:.1f} s at {url}")
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600) as http:
            request(url, cases[0], uploads, http)  # first request: warm-up
            warm = [request(url, cases[i % len(cases)], uploads, http)[0] for i in range(args.warm)]
        w = statistics.median(warm)
        print(f"latency per case: warm {w:.2f} s (median of {args.warm}) vs cold nnUNetv2_predict {cold:.2f} s "
              f"(best of {args.repeats}) = {w / cold:.2f}x (target <= 0.3x)")
        ok = report_load(load(url, cases, uploads, refs, args, root / "scratch", proc.pid), args)
        left = [p for p in (root / "server_tmp").rglob("*") if p.is_file()]
        print(f"temporary files left while serving: {len(left)}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    after = list((root / "server_tmp").iterdir())
    print(f"after shutdown: {len(after)} entries left in the server's TMPDIR; load average {os.getloadavg()}")
    return 0 if ok and not left and not after else 1


if __name__ == "__main__":
    sys.exit(main())
