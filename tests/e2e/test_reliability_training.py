"""Issue 12, training side, through the real command: every fault ends with exit code 1 and one line naming the
file/setting and the fix, nothing partial or locked is left, and the corrected command then trains.

Each test works on its own copy of one tiny planned and preprocessed dataset (6 cases of 16x20x20)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from nnseg.cli.main import main
from nnseg.jsonio import load_json, save_json
from nnseg.locks import LOCK_NAME, owner_record, read_lock
from nnseg.preprocessed.store import list_cases, load_case, remove_case, save_case
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.training import checkpoint as checkpoint_module
from nnseg.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
MODEL = "Dataset992_Reliable"
TRAINER = "nnUNetTrainer_1epoch_NoMirroring"
FAST = ["--epochs", "1", "--iterations-per-epoch", "1", "--set", "val_iterations_per_epoch=1", "--set", "batch_size=2",
        "--seed", "0", "-device", "cpu", "-tr", "nnUNetTrainerNoMirroring"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    env = _env(root)
    make_demo_dataset(Path(env["nnUNet_raw"]) / MODEL, num_cases=6, num_test=0, shape=(16, 20, 20), lesion=False)
    assert main(["plan-and-preprocess", "-d", "992", "-c", "3d_fullres", "-np", "1", "--no_pbar"], env=env) == 0
    return root


@pytest.fixture
def env(planned: Path, tmp_path: Path) -> dict[str, str]:
    """A private copy of the planned dataset (tests change cases, plans and splits)."""
    for name in ("raw", "pre"):
        shutil.copytree(planned / name, tmp_path / name)
    return _env(tmp_path)


def _env(root: Path) -> dict[str, str]:
    return {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"), "nnUNet_results": str(root / "res"),
            "HOME": str(root), "nnUNet_n_proc_DA": "0"}


def _pre(env: dict[str, str]) -> Path:
    return Path(env["nnUNet_preprocessed"]) / MODEL


def _data(env: dict[str, str]) -> Path:
    return _pre(env) / "nnUNetPlans_3d_fullres"


def _fold(env: dict[str, str], fold: str = "0", trainer: str = TRAINER) -> Path:
    return Path(env["nnUNet_results"]) / MODEL / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def _train(env: dict[str, str], *extra: str, fold: str = "0") -> int:
    return main(["train", "992", "3d_fullres", fold, *FAST, *extra], env=env)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line (exactly one line starting with the program name: no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("nnseg train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _nothing_left(fold: Path) -> None:
    """No settings, checkpoint, lock or temporary file left by a failed start."""
    if fold.exists():
        names = {p.name for p in fold.iterdir()}
        assert not names & {"train_config.json", LOCK_NAME, "checkpoint_final.pth", "checkpoint_latest.pth"}, names
        assert not [n for n in names if n.endswith(".tmp") or ".tmp." in n], names


def _trains(env: dict[str, str], *extra: str, fold: str = "0") -> None:
    assert _train(env, *extra, fold=fold) == 0
    assert (_fold(env, fold) / "checkpoint_final.pth").is_file() and not (_fold(env, fold) / LOCK_NAME).exists()


def _rewrite_case(env: dict[str, str], case: str, *, data=None, seg=None) -> None:  # type: ignore[no-untyped-def]
    d, s, props = load_case(_data(env), case)
    save_case(_data(env), case, np.asarray(d[...]) if data is None else data, np.asarray(s[...]) if seg is None else seg,
              props, patch_size=None)


# 1: a non-finite loss stops training at the first step, naming the cases
def test_nan_input_stops_at_once_naming_the_cases(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cases = list_cases(_data(env))
    for case in cases:
        d, _, _ = load_case(_data(env), case)
        _rewrite_case(env, case, data=np.full(d.shape, np.nan, dtype=np.float32))
    assert _train(env) == 1
    line = _error(capsys)
    assert "training loss is nan at epoch 0, iteration 0" in line and "hold NaN/inf values" in line
    assert any(c in line.split("hold NaN")[0] for c in cases) and "imagesTr" in line and "nnUNetv2_preprocess" in line
    _nothing_left(_fold(env))


# 2: a partial preprocessing is refused (never a subset in splits_final.json); splits naming missing cases too
def test_partial_preprocessing_is_refused_then_runs(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cases = list_cases(_data(env))
    for case in cases[:2]:
        remove_case(_data(env), case)
    assert _train(env) == 1
    line = _error(capsys)
    assert f"lacks 2 of the {len(cases)} cases" in line and cases[0] in line and cases[1] in line
    assert "nnUNetv2_preprocess -d Dataset992_Reliable -c 3d_fullres" in line
    assert not (_pre(env) / "splits_final.json").exists()
    _nothing_left(_fold(env))
    assert main(["preprocess", "-d", "992", "-c", "3d_fullres", "-np", "1"], env=env) == 0
    _trains(env)
    splits = load_json(_pre(env) / "splits_final.json")
    assert sorted(c for s in splits for c in s["val"]) == cases


def test_splits_naming_missing_cases_are_refused(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cases = list_cases(_data(env))
    save_json([{"train": cases[:4] + ["ghost_case"], "val": cases[4:]}], _pre(env) / "splits_final.json")
    assert _train(env) == 1
    line = _error(capsys)
    assert "splits_final.json names 1 case(s) that are not preprocessed" in line and "ghost_case" in line
    assert "remove them from" in line
    _nothing_left(_fold(env))


# 4 / 9: every bad setting is refused before anything is written; the corrected command then trains
@pytest.mark.parametrize("setting", ["initial_lr=-5", "momentum=-1", "initial_lr=nan", "batch_size=0"])
def test_bad_setting_refused_then_corrected_runs(env: dict[str, str], setting: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(env, "--set", setting) == 1
    field = setting.split("=")[0]
    line = _error(capsys)
    assert f"TrainConfig {field}=" in line and "is invalid" in line and f"--set {field}=VALUE" in line
    assert not _fold(env).exists()
    _trains(env)


def test_zero_iterations_per_epoch_is_refused(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23.6: the message names the flag typed (it said "Set it with --set iterations_per_epoch=VALUE")."""
    assert _train(env, "--iterations-per-epoch", "0") == 1
    line = _error(capsys)
    assert "--iterations-per-epoch 0 is invalid: it must be an integer >= 1" in line and "--set" not in line, line
    assert _train(env, "--time-budget", "-1") == 1
    line = _error(capsys)
    assert "--time-budget -1.0 is invalid" in line and "--set" not in line, line
    assert not _fold(env).exists()


def test_undeclared_label_refused_naming_the_case(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    case = list_cases(_data(env))[3]
    _, seg, _ = load_case(_data(env), case)
    original = np.asarray(seg[...])
    _rewrite_case(env, case, seg=np.where(original == 1, 7, original).astype(original.dtype))
    assert _train(env) == 1
    line = _error(capsys)
    assert f"case {case}" in line and "label value(s) [7]" in line and "dataset.json" in line
    assert "nnUNetv2_preprocess -d Dataset992_Reliable -c 3d_fullres" in line
    _nothing_left(_fold(env))
    _rewrite_case(env, case, seg=original)
    _trains(env)


def test_unusable_pretrained_weights_refused_naming_the_file(env: dict[str, str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert _train(env, "-pretrained_weights", str(garbage)) == 1
    line = _error(capsys)
    assert f"-pretrained_weights {garbage}" in line and "not a readable torch checkpoint" in line
    other = tmp_path / "other.pth"
    torch.save({"network_weights": {"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(3, 3)}}, other)
    assert _train(env, "-pretrained_weights", str(other)) == 1
    line = _error(capsys)
    assert f"-pretrained_weights {other} do not fit this network" in line and "leave -pretrained_weights out" in line
    _nothing_left(_fold(env))
    _trains(env)


def test_huge_patch_refused_naming_the_plans(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    plans_file = _pre(env) / "nnUNetPlans.json"
    original = plans_file.read_text()
    plans = json.loads(original)
    plans["configurations"]["3d_fullres"]["patch_size"] = [4096, 4096, 4096]
    plans_file.write_text(json.dumps(plans))
    assert _train(env) == 1
    line = _error(capsys)
    assert str(plans_file) in line and "patch_size [4096, 4096, 4096]" in line and "nnUNetv2_plan_experiment" in line
    _nothing_left(_fold(env))
    plans_file.write_text(original)
    _trains(env)


# 6: a checkpoint that cannot be written: one line with the path and the cause, nothing partial
def test_checkpoint_write_failure_is_one_line(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    @contextmanager
    def disk_full(path):  # type: ignore[no-untyped-def]
        yield Path("/dev/full")  # every write fails with ENOSPC, as on a full disk

    monkeypatch.setattr(checkpoint_module, "atomic_path", disk_full)
    assert _train(env) == 1
    line = _error(capsys)
    assert f"cannot write checkpoint {_fold(env)}" in line and "No space left on device" in line
    assert "inline_container" not in line and "--c" in line
    _nothing_left(_fold(env))
    monkeypatch.undo()
    _trains(env)


# 9: unknown fold, --c with nothing to continue, a damaged checkpoint_latest.pth
def test_fold_beyond_the_splits_is_refused(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(env, fold="7") == 1
    line = _error(capsys)
    assert "fold 7 is not in" in line and "splits_final.json, which has folds 0-4" in line and "add the fold" in line
    assert not _fold(env, "7").exists()


def test_continue_without_checkpoint_says_so(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(env, "--c") == 0
    err = capsys.readouterr().err
    assert f"note: --c but {_fold(env)} holds no checkpoint to continue from; starting from scratch" in err


def test_damaged_latest_checkpoint_offers_best(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--epochs", "2", "--set", "save_every=1"]
    assert _train(env, *args) == 0
    fold = _fold(env, trainer="nnUNetTrainer_2epochs_NoMirroring")
    assert (fold / "checkpoint_best.pth").is_file()
    latest = fold / "checkpoint_latest.pth"
    latest.write_bytes((fold / "checkpoint_final.pth").read_bytes()[:5000])  # a truncated copy
    (fold / "checkpoint_final.pth").unlink()
    assert _train(env, *args, "--c") == 1
    line = _error(capsys)
    assert f"cannot continue from {latest}" in line and "checkpoint_best.pth (epoch" in line
    assert f"`mv {latest} {latest}.damaged`" in line and not (fold / LOCK_NAME).exists()
    latest.rename(latest.with_name(latest.name + ".damaged"))
    assert _train(env, *args, "--c") == 0
    assert load_checkpoint(fold / "checkpoint_final.pth")["current_epoch"] == 2


# 8: one training per fold; a stale lock (SIGKILL) is taken over
def test_second_training_of_a_fold_is_refused_and_a_killed_owner_is_taken_over(
        env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [sys.executable, "-m", "nnseg.cli.main", "train", "992", "3d_fullres", "0", *FAST,
            "--set", "iterations_per_epoch=400"]
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = _fold(env) / LOCK_NAME
    try:
        deadline = time.time() + 120
        while not lock.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock.exists(), "the first training did not take the lock"
        assert _train(env) == 1
        line = _error(capsys)
        assert f"{lock} records nnUNetv2_train fold 0 by pid {proc.pid} on {socket.gethostname()}" in line
        assert "still running" in line and "Wait for it to finish" in line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert lock.exists()  # SIGKILL: no cleanup
    assert _train(env, "--set", "iterations_per_epoch=1") == 0
    err = capsys.readouterr().err
    assert f"note: took over the stale lock of pid {proc.pid}" in err and not lock.exists()


def test_prediction_output_folder_is_locked(env: dict[str, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _trains(env)
    out = tmp_path / "pred"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {**owner_record("nnUNetv2_predict -o elsewhere"), "pid": sleeper.pid}
        record["token"] = None
        (out / LOCK_NAME).write_text(json.dumps(record))
        args = ["predict", "-i", str(Path(env["nnUNet_raw"]) / MODEL / "imagesTr"), "-o", str(out), "-d", "992",
                "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta",
                "--disable_progress_bar", "-npp", "0", "-nps", "0"]
        assert main(args, env=env) == 1
        err = capsys.readouterr().err
        assert f"{out / LOCK_NAME} records nnUNetv2_predict -o elsewhere by pid {sleeper.pid}" in err
        assert not list(out.glob("*.nii.gz"))
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    assert main(args, env=env) == 0
    assert len(list(out.glob("*.nii.gz"))) == 6 and not (out / LOCK_NAME).exists()


def test_data_parallel_training_takes_the_fold_lock_on_rank_0(env: dict[str, str],
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    """-num_gpus 2 on the CPU: rank 0 refuses a locked fold and the launcher ends the other rank (no hang).

    capfd: the ranks are spawned processes writing to the inherited stderr."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = _fold(env) / LOCK_NAME
    try:
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({**owner_record("nnUNetv2_train fold 0"), "pid": sleeper.pid, "token": None}))
        start = time.time()
        assert _train(env, "-num_gpus", "2") == 1
        err = capfd.readouterr().err
        assert f"{lock} records nnUNetv2_train fold 0 by pid {sleeper.pid}" in err and time.time() - start < 120
        assert not (_fold(env) / "train_config.json").exists()
        assert read_lock(lock)["pid"] == sleeper.pid  # type: ignore[index]  # the owner's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
