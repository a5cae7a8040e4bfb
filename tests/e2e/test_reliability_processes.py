"""Issue 12 item 3 / issue 19: no process of nnseg's outlives the command, after a SIGKILL or a normal exit.

Each command runs in its own session (``start_new_session=True``); afterwards no process of that session may be
left (spawn workers or multiprocessing's resource tracker re-parented to PID 1 were left before)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.cli.main import main
from nnseg.raw.demo_data import make_demo_dataset
from shared_paths import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table from /proc")
GRACE_S = 3.0


def session_processes(sid: int) -> list[str]:
    """``pid state cmdline`` of the live (non-zombie) processes of session ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry} {fields[0]} {cmdline[:120]}")
    return found


def _wait_empty(sid: int, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _nnseg(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``nnseg ARGS`` in a new session; its output goes to ``cwd/log.txt`` (a pipe would be held by orphans)."""
    full_env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    with (cwd / "log.txt").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "nnseg.cli.main", *args], env=full_env, cwd=cwd,
                                start_new_session=True, stdout=log, stderr=log)


def _finish(proc: subprocess.Popen[bytes], cwd: Path) -> None:
    assert proc.wait(timeout=300) == 0, (cwd / "log.txt").read_text()


@pytest.fixture
def planned(roots_env: dict[str, str], tmp_path: Path) -> Path:
    make_demo_dataset(Path(roots_env["nnUNet_raw"]) / "Dataset001_Demo", num_cases=8, shape=(12, 16, 16), num_test=0)
    assert main(["plan-and-preprocess", "-d", "1", "--no_pp", "-npfp", "1", "--no_pbar"], env=roots_env, cwd=tmp_path) == 0
    return Path(roots_env["nnUNet_preprocessed"]) / "Dataset001_Demo" / "nnUNetPlans_3d_fullres"


def test_preprocess_leaves_no_process_after_sigkill_or_normal_exit(planned: Path, roots_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    args = ["preprocess", "-d", "1", "-c", "3d_fullres", "-np", "2", "--no_pbar"]
    proc = _nnseg(args, roots_env, tmp_path)
    deadline = time.monotonic() + 120
    while len(session_processes(proc.pid)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the command, 2 spawn workers and the resource tracker
    time.sleep(0.3)
    before = session_processes(proc.pid)
    assert proc.poll() is None, "preprocessing finished before it could be killed"
    assert len(before) >= 4, before
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _wait_empty(proc.pid, GRACE_S)
    assert left == [], f"processes left {GRACE_S} s after SIGKILL: {left}"

    proc = _nnseg(args, roots_env, tmp_path)  # resumes; a normal exit leaves nothing either
    _finish(proc, tmp_path)
    assert session_processes(proc.pid) == []
    assert len([p for p in planned.iterdir() if p.name.endswith(".json") and p.name.startswith("case_")]) == 8


_POOL_SCRIPT = """
import sys, time
from nnseg.parallel import spawn_map
if __name__ == "__main__":
    spawn_map(time.sleep, [60.0] * 2, num_processes=2)
"""


def test_sigkill_of_a_spawn_map_pool_leaves_no_worker(tmp_path: Path) -> None:
    """The multiprocessing.Pool used by evaluate, postprocessing, verify and convert."""
    script = tmp_path / "pool.py"
    script.write_text(_POOL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(session_processes(proc.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the workers run their initializer and start sleeping
    assert len(session_processes(proc.pid)) >= 4
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _wait_empty(proc.pid, GRACE_S)
    assert left == [], f"processes left {GRACE_S} s after SIGKILL: {left}"


def test_normal_exit_of_predict_leaves_no_process(roots_env: dict[str, str], expected_dir: Path,
                                                   tmp_path: Path) -> None:
    from test_reliability_predict import _model

    _model(Path(roots_env["nnUNet_results"]), expected_dir)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for case in ("case_a", "case_b"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(100, 20, (10, 14, 12)).astype(np.float32)),
                        str(images / f"{case}_0000.nii.gz"))
    proc = _nnseg(["predict", "-i", str(images), "-o", str(tmp_path / "out"), "-d", "777", "-c", "3d_tiny", "-tr",
                   "nnUNetTrainer_5epochs", "-f", "0", "-device", "cpu", "--disable_progress_bar", "-npp", "2",
                   "-nps", "2"], roots_env, tmp_path)
    _finish(proc, tmp_path)
    assert (tmp_path / "out" / "case_b.nii.gz").is_file()
    assert session_processes(proc.pid) == []
