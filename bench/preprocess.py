"""Benchmark ``nnseg plan-and-preprocess``: wall time and peak memory on the shared datasets.

Runs the command in a child process (fresh nnU-Net folders each time) and reports
* wall time,
* peak total RSS of the whole process tree (parent + workers, summed; sampled from /proc every 20 ms),
* the largest single-process RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``),
* CPU seconds (user + system) of the whole tree (a contention-free measure on a busy machine).

Cases: Dataset004_Hippocampus (200 cases, converted from ``Task04_Hippocampus`` first; conversion not timed) and
Dataset901_SynthAniso with the default (scipy) and the torch-resampling planner. nnU-Net 2.8.1 needs 26.7 s and
1.9 GB for Hippocampus on the earlier 2-core x86-64 machine and 23.0 s on a 2-core AMD EPYC (Zen 4); the target is
<= 0.35 x nnU-Net's wall. When nnU-Net v2 is importable (installed beside, or ``--nnunet-site DIR`` holding it) its
``nnUNetv2_plan_and_preprocess`` runs on the same data right after nnseg's and the ratio uses it; otherwise the
recorded 23.0 s. Every figure is printed with the CPU it comes from (``bench/cpuinfo.py``).

Hippocampus is also run on a local Dask cluster (``--cluster local:N`` with N = ``--np`` worker processes, issue 18),
alternating with the plain run ``--repeat`` times (default 3, fresh preprocessed folders), and the median walls are
printed with their ratio (target <= 1.15x).

Usage: ``python bench/preprocess.py [--np 2] [--only hippocampus|synth] [--no-cluster] [--repeat 3] [--verbose] [--keep DIR] [--nnunet-site DIR]``
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cpuinfo import cpu_line  # bench/cpuinfo.py (this script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
NNUNET_RECORDED_S = 23.0  # nnU-Net 2.8.1, Hippocampus -np 2 -npfp 2, 2-core AMD EPYC Zen 4 (issue 19)
TARGET_RATIO = 0.35
DATA = Path(os.environ.get("NNSEG_SHARED", REPO.parent / "shared")) / "data"
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree_rss(root: int) -> int:
    """Summed resident memory (bytes) of ``root`` and all its descendants."""
    tree, total, todo = _children_of(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; wall seconds, peak summed tree RSS and max single-process RSS (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    max_single = after.ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"wall_s": wall, "cpu_s": cpu, "peak_tree_rss_mb": peak[0] / 2**20, "max_process_rss_mb": max_single,
            "output": output}


def _roots(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        (base / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(base / sub)
    return env


def _command(dataset: str, num_processes: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "nnseg.cli.main", "plan-and-preprocess", "-d", dataset, "-np", str(num_processes),
            "-npfp", str(num_processes), "--no_pbar", "--verbose", *extra]


def bench_hippocampus(base: Path, num_processes: int, *, cluster: bool = False) -> dict[str, float]:
    """Plain, or with ``--cluster local:<num_processes>`` (a LocalCluster of that many single-threaded workers);
    the raw dataset is converted once, the preprocessed folder is fresh for every run."""
    from nnseg.raw.convert import convert_msd

    env = _roots(base / ("hippocampus_cluster" if cluster else "hippocampus"))
    if not (Path(env["nnUNet_raw"]) / "Dataset004_Hippocampus" / "dataset.json").is_file():
        convert_msd(DATA / "Task04_Hippocampus", env["nnUNet_raw"], num_processes=num_processes)
    shutil.rmtree(env["nnUNet_preprocessed"], ignore_errors=True)
    Path(env["nnUNet_preprocessed"]).mkdir(parents=True)
    extra = ["--cluster", f"local:{num_processes}"] if cluster else []
    return run_measured(_command("4", num_processes, extra), env)


def _line(name: str, r: dict[str, float], extra: str = "") -> str:
    return (f"{name:<45} wall {r['wall_s']:6.1f} s   CPU {r['cpu_s']:6.1f} s   peak RSS (tree) "
            f"{r['peak_tree_rss_mb']:6.0f} MB   largest process {r['max_process_rss_mb']:5.0f} MB{extra}")


def hippocampus_section(base: Path, num_processes: int, *, cluster: bool, repeat: int, verbose: bool,
                        site: Path | None) -> None:
    """Hippocampus plain (and, alternating with it, on the local cluster) ``repeat`` times; medians and their ratio
    (one run of each swings by +-10 % on a busy 2-core machine)."""
    plain, dist = [], []
    for i in range(repeat):
        plain.append(bench_hippocampus(base, num_processes))
        if cluster:
            dist.append(bench_hippocampus(base, num_processes, cluster=True))
        pair = f"   local:{num_processes} {dist[-1]['wall_s']:.2f} s = {dist[-1]['wall_s'] / plain[-1]['wall_s']:.2f}x" \
            if cluster else ""
        print(f"  run {i + 1}/{repeat}: plain {plain[-1]['wall_s']:.2f} s{pair}", flush=True)
        if verbose:
            print(plain[-1]["output"] + (dist[-1]["output"] if cluster else ""))
    median = sorted(plain, key=lambda r: r["wall_s"])[len(plain) // 2]
    print(_line(f"Dataset004_Hippocampus (200 cases){' median' if repeat > 1 else ''}", median), flush=True)
    _compare_with_nnunet(median, base, num_processes, site)
    if cluster:
        theirs = sorted(dist, key=lambda r: r["wall_s"])[len(dist) // 2]
        print(_line(f"  same on --cluster local:{num_processes} (Dask)", theirs,
                    f"   {theirs['wall_s'] / median['wall_s']:.2f}x the plain wall (medians; target <= 1.15)"),
              flush=True)


def _nnunet_env(env: dict[str, str], site: Path | None) -> dict[str, str] | None:
    """``env`` with nnU-Net v2 importable (``site`` prepended to PYTHONPATH), or None when it is not installed."""
    env = dict(env)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    probe = subprocess.run([sys.executable, "-c", "import nnunetv2"], env=env, capture_output=True)
    return env if probe.returncode == 0 else None


def bench_nnunet_hippocampus(base: Path, num_processes: int, site: Path | None) -> dict[str, float] | None:
    """nnU-Net's own plan_and_preprocess on the same converted raw data (fresh preprocessed folder), or None."""
    env = _roots(base / "hippocampus")
    env["nnUNet_preprocessed"] = str(base / "nnunet_preprocessed")
    Path(env["nnUNet_preprocessed"]).mkdir(parents=True, exist_ok=True)
    env = _nnunet_env(env, site)
    if env is None:
        return None
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "plan_and_preprocess_entry as m; sys.argv = ['nnUNetv2_plan_and_preprocess'] + sys.argv[1:]; m()")
    return run_measured([sys.executable, "-c", code, "-d", "4", "-np", str(num_processes), "-npfp",
                         str(num_processes)], env)


def bench_synth(base: Path, num_processes: int, planner: str) -> dict[str, float]:
    env = _roots(base / f"synth_{planner}")
    shutil.copytree(DATA / "Dataset901_SynthAniso", Path(env["nnUNet_raw"]) / "Dataset901_SynthAniso")
    return run_measured(_command("901", num_processes, ["-pl", planner]), env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--np", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--only", choices=("hippocampus", "synth"), default=None)
    parser.add_argument("--no-cluster", dest="cluster", action="store_false",
                        help="skip the Hippocampus run on a local Dask cluster")
    parser.add_argument("--repeat", type=int, default=3, help="Hippocampus runs of each kind, alternating; the "
                        "medians are compared (default 3)")
    parser.add_argument("--verbose", action="store_true", help="print the command's output (phase timings)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--nnunet-site", type=Path, default=None, help="folder holding nnunetv2 (site-packages "
                        "style) to run nnU-Net beside nnseg; default: nnU-Net only if installed in this environment")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="nnseg_bench_pp_"))
    try:
        print(f"plan-and-preprocess, -np {args.np} -npfp {args.np}; {cpu_line()}")
        if args.only in (None, "hippocampus"):
            hippocampus_section(base, args.np, cluster=args.cluster, repeat=max(1, args.repeat),
                                verbose=args.verbose, site=args.nnunet_site)
        for planner in ("ExperimentPlanner", "nnUNetPlanner_torchres") if args.only in (None, "synth") else ():
            r = bench_synth(base, args.np, planner)
            print(_line(f"Dataset901_SynthAniso {planner}", r), flush=True)
            if args.verbose:
                print(r["output"])
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


def _compare_with_nnunet(r: dict[str, float], base: Path, num_processes: int, site: Path | None) -> None:
    theirs = bench_nnunet_hippocampus(base, num_processes, site)
    if theirs is None:
        ref, source = NNUNET_RECORDED_S, "recorded on a 2-core AMD EPYC Zen 4 (nnU-Net not installed here)"
    else:
        ref, source = theirs["wall_s"], f"measured now, CPU {theirs['cpu_s']:.1f} s"
    print(f"  vs nnU-Net {ref:.1f} s ({source}): wall ratio {r['wall_s'] / ref:.2f} (target <= {TARGET_RATIO}); "
          f"{cpu_line()}", flush=True)


if __name__ == "__main__":
    main()
