"""Preprocessing, prediction and cross-validation on a real Dask cluster (a scheduler and two worker processes on
127.0.0.1, started here), each with one worker SIGKILLed in the middle: every output complete, identical to the
single-machine command, none duplicated or truncated (issue 18)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dask_cluster import DaskProcesses, run_killing_a_worker

from nnseg.cli.main import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0"}
    processes = DaskProcesses(tmp_path_factory.mktemp("dask"), env)
    try:
        yield processes
    finally:
        processes.close()


def _env(root: Path, **roots: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "nnUNet_n_proc_DA": "0", "NNSEG_DEBUG": ""}
    for key in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{key}"] = roots.get(key, str(root / key))
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnseg.cli.main", *args]


def _no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*")], "temporary files left behind"


@pytest.mark.golden
def test_preprocess_hippocampus_200_survives_a_killed_worker(cluster: DaskProcesses, shared_data: Path,
                                                             tmp_path: Path) -> None:
    import blosc2

    from nnseg.raw.convert import convert_msd

    convert_msd(shared_data / "Task04_Hippocampus", tmp_path / "raw", num_processes=2)
    plain, dist = _env(tmp_path, preprocessed=str(tmp_path / "plain")), _env(tmp_path)
    assert main(["plan-and-preprocess", "-d", "4", "-np", "2", "-npfp", "2", "--no_pbar"], env=plain) == 0
    data = tmp_path / "preprocessed" / "Dataset004_Hippocampus" / "nnUNetPlans_3d_fullres"
    ready = lambda: 0 if data.is_dir() and len(list(data.glob("*.json"))) >= 40 else None  # noqa: E731
    proc, killed = run_killing_a_worker(_cli("plan-and-preprocess", "-d", "4", "--no_pbar", "--cluster",
                                             cluster.address), dist, cluster, ready)
    cluster.restart(0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed == 0, "the run ended before a worker could be killed"
    ours, theirs = tmp_path / "preprocessed" / "Dataset004_Hippocampus", tmp_path / "plain" / "Dataset004_Hippocampus"
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".b2nd"]) == 2 * 2 * 200  # 2d + 3d_fullres, image + seg
    for f in files:
        if f.suffix == ".b2nd":
            a, b = blosc2.open(str(ours / f))[:], blosc2.open(str(theirs / f))[:]
            assert a.dtype == b.dtype and np.array_equal(a, b), f
        else:
            assert (ours / f).read_bytes() == (theirs / f).read_bytes(), f
    _no_leftovers(ours)


@pytest.mark.golden
def test_predict_20_cases_survives_a_killed_worker(cluster: DaskProcesses, shared_data: Path, expected_dir: Path,
                                                   tmp_path: Path) -> None:
    import SimpleITK as sitk

    from nnseg.sharing.install import install_model_zip

    model = install_model_zip(expected_dir / "Dataset004_Hippocampus" / "model" / "model.zip", tmp_path / "results")[0]
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((shared_data / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))[:20]:
        (images / source.name.replace(".nii.gz", "_0000.nii.gz")).symlink_to(source)
    common = ["-i", str(images), "-m", str(model), "-f", "0", "-device", "cpu", "--disable_tta", "--precision", "fp32",
              "--disable_progress_bar"]
    env = _env(tmp_path)
    assert main(["predict-from-modelfolder", *common, "-o", str(tmp_path / "plain")], env=env) == 0
    out = tmp_path / "dist"
    ready = lambda: 1 if out.is_dir() and len(list(out.glob("*.nii.gz"))) >= 5 else None  # noqa: E731
    proc, killed = run_killing_a_worker(_cli("predict-from-modelfolder", *common, "-o", str(out), "--cluster",
                                             cluster.address), env, cluster, ready)
    cluster.restart(1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed == 1, "the run ended before a worker could be killed"
    segs = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(segs) == 20 and segs == sorted(p.name for p in (tmp_path / "plain").glob("*.nii.gz"))
    for name in segs:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain" / name)))
        assert np.array_equal(a, b), name
    for name in ("dataset.json", "plans.json"):
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    _no_leftovers(out)


TRAIN = ["-tr", "nnUNetTrainerNoMirroring", "--epochs", "2", "--iterations-per-epoch", "2", "--set",
         "val_iterations_per_epoch=1", "--set", "batch_size=2", "--set", "save_every=1", "--seed", "0", "-device", "cpu",
         "--precision", "fp32"]
TRAINER = "nnUNetTrainer_2epochs_NoMirroring"


def test_cross_validate_two_configurations_survives_a_killed_worker(cluster: DaskProcesses, tmp_path: Path) -> None:
    from nnseg.raw.demo_data import make_demo_dataset

    make_demo_dataset(tmp_path / "raw" / "Dataset991_Train", num_cases=6, num_test=0, shape=(16, 20, 20), lesion=False)
    hand, dist = _env(tmp_path, results=str(tmp_path / "by_hand")), _env(tmp_path)
    assert main(["plan-and-preprocess", "-d", "991", "-c", "2d", "3d_fullres", "-np", "1", "--no_pbar"], env=hand) == 0
    for configuration in ("2d", "3d_fullres"):
        for fold in ("0", "1"):
            assert main(["train", "991", configuration, fold, *TRAIN, "--npz"], env=hand) == 0
    assert main(["find-best", "991", "-c", "2d", "3d_fullres", "-f", "0", "1", "-tr", TRAINER, "-np", "1"],
                env=hand) == 0

    results = tmp_path / "results" / "Dataset991_Train"
    victim: list[Path] = []

    def ready() -> int | None:  # a worker in the middle of a fold that has a checkpoint to resume from
        for i in (0, 1):
            for folder in re.findall(r"fold folder (\S+);", cluster.log(i))[-1:]:
                fold = Path(folder)
                if (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").is_file():
                    victim.append(fold)
                    return i
        return None

    proc, killed = run_killing_a_worker(_cli("cross-validate", "-d", "991", "-c", "2d", "3d_fullres", "-f", "0", "1",
                                             "-np", "1", "--cluster", cluster.address, *TRAIN), dist, cluster, ready)
    cluster.restart(max(killed, 0))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed >= 0, "the run ended before a worker could be killed"
    for configuration in ("2d", "3d_fullres"):
        for fold in (0, 1):
            folder = results / f"{TRAINER}__nnUNetPlans__{configuration}" / f"fold_{fold}"
            assert (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file()
    logs = "".join(p.read_text() for p in sorted(victim[0].glob("training_log_*.txt")))
    resumed = [int(e) for e in re.findall(r"starting at epoch (\d+)", logs)]
    assert resumed[0] == 0 and max(resumed) >= 1, logs  # the killed fold continued from its checkpoint
    mine = (results / "inference_instructions.txt").read_text().replace(str(tmp_path / "results"), "ROOT")
    theirs = (tmp_path / "by_hand" / "Dataset991_Train" / "inference_instructions.txt").read_text()
    assert mine == theirs.replace(str(tmp_path / "by_hand"), "ROOT")


def test_local_cluster_preprocess_equals_plain_and_reruns_skip(tmp_path: Path) -> None:
    """``--cluster local:2`` (a scheduler here, two worker processes) on a tiny dataset; a rerun skips every case."""
    from nnseg.raw.demo_data import make_demo_dataset

    make_demo_dataset(tmp_path / "raw" / "Dataset991_Train", num_cases=4, num_test=0, shape=(12, 16, 16), lesion=False)
    plain, dist = _env(tmp_path, preprocessed=str(tmp_path / "plain")), _env(tmp_path)
    args = ["plan-and-preprocess", "-d", "991", "-c", "3d_fullres", "--no_pbar", "--verbose"]
    assert main([*args, "-np", "1"], env=plain) == 0
    for attempt in range(2):
        proc = subprocess.run(_cli(*args, "--cluster", "local:2"), env=dist, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 cases preprocessed, 4 already done" in proc.stdout  # the second run found every case complete
    assert "2 local single-threaded worker process(es)" in proc.stderr, proc.stderr
    import psutil  # the local workers (forked on Linux: same command line as the command) ended with it

    left = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == proc.args]
    assert not left, left
    ours, theirs = tmp_path / "preprocessed" / "Dataset991_Train", tmp_path / "plain" / "Dataset991_Train"
    data = sorted(p.relative_to(ours) for p in (ours / "nnUNetPlans_3d_fullres").rglob("*"))
    assert len(data) == 4 * 3 + 1 and data == sorted(p.relative_to(theirs) for p in (theirs / "nnUNetPlans_3d_fullres").rglob("*"))
    for f in data:
        if f.suffix == ".json":
            assert (ours / f).read_bytes() == (theirs / f).read_bytes(), f


_LOCAL_WORKERS_SCRIPT = """
import json, os, sys
import psutil
from nnseg.cluster import connect

def task(_):
    import SimpleITK
    return os.getpid(), SimpleITK.ProcessObject.GetGlobalDefaultNumberOfThreads()

fork = sys.argv[1] == "fork"
assert connect._can_fork() or not fork, "a fresh interpreter on Linux forks its workers"
connect._can_fork = lambda: fork
with connect.open_client("local:2", announce=False, preload=("SimpleITK",)) as client:
    client.wait_for_workers(2, timeout=60)
    workers = [p.pid for p in psutil.Process().children()]
    results = [f.result(timeout=120) for f in client.map(task, range(8), pure=False)]
print(json.dumps({"workers": workers, "results": results, "caller": os.getpid()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
@pytest.mark.parametrize("mode", ["fork", "new-interpreter"])
def test_local_workers_are_single_threaded_processes_that_end_with_the_caller(tmp_path: Path, mode: str) -> None:
    """``local:2`` workers, forked (Linux) or started as ``python -m nnseg.cluster.local_worker`` (elsewhere, or when
    the caller already runs threads): separate processes, one ITK thread, none left when the caller is done."""
    import json

    import psutil

    script = tmp_path / "local_workers.py"  # its `task` must be importable by a new interpreter: run from tmp_path
    script.write_text(_LOCAL_WORKERS_SCRIPT)
    proc = subprocess.run([sys.executable, script.name, mode], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    pids = {pid for pid, _ in out["results"]}
    assert len(out["workers"]) == 2 and pids <= set(out["workers"]) and out["caller"] not in pids
    assert {threads for _, threads in out["results"]} == {1}
    assert not [pid for pid in out["workers"] if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
