"""Experiment tracking through nnUNetv2_train with the real tools: W&B in offline mode (nnU-Net's three variables),
an MLflow tracking server started here on 127.0.0.1, TensorBoard event files. A 3-epoch training dies after epoch 1,
``--c`` continues it; each tool's own storage then holds epochs 0, 1, 2 once each, in the same run, with the values
the checkpoint logged."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nnseg.cli.main import run_command
from nnseg.cli.table import by_script
from nnseg.jsonio import load_json
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.training import loop
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.loggers import TRACKING_FILE, logger_hooks
from nnseg.training.loggers.common import EPOCH_SCALARS

pytestmark = pytest.mark.slow
DATASET = "Dataset994_Track"
FOLD = Path(DATASET) / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
TRAIN = ["994", "3d_fullres", "0", "--iterations-per-epoch", "2", "--set", "val_iterations_per_epoch=1",
         "--set", "num_epochs=3", "--set", "save_every=1", "--set", "batch_size=2", "--seed", "0", "-device", "cpu",
         "--logger", "mlflow", "--logger", "tensorboard"]


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing but CI=true")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend) on a free 127.0.0.1 port, stopped at the end."""
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        _missing("the mlflow command")
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [exe, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root",
           str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started (its own session)
        try:
            server.wait(timeout=5)  # uvicorn drains for long; nothing is left to drain here
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tracking")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"), "nnUNet_results": str(root / "res"),
           "HOME": str(root), "nnUNet_n_proc_DA": "0"}
    make_demo_dataset(Path(env["nnUNet_raw"]) / DATASET, num_cases=5, num_test=0, shape=(16, 20, 20), lesion=False)
    assert nnunet("nnUNetv2_plan_and_preprocess", "-d", "994", "-c", "3d_fullres", "-np", "1", "--no_pbar", env=env) == 0
    return env


def nnunet(script: str, *argv: str, env: dict[str, str]) -> int:
    return run_command(by_script()[script], list(argv), prog=script, env=env)


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B run file (LevelDB log format, ``:W&B`` header), parsed with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(fold: Path) -> list[tuple[str, dict[int, dict[str, float]]]]:
    """(run id, {step: metrics}) of each offline run file W&B wrote in the fold, oldest first."""
    out = []
    for path in sorted((fold / "wandb").glob("offline-run-*/run-*.wandb")):
        run_id, steps = "", {}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
            elif kind == "history":
                items = {(i.key or "/".join(i.nested_key)): float(i.value_json) for i in record.history.item}
                steps[int(items.pop("_step"))] = items
        out.append((run_id, steps))
    return out


def test_three_loggers_record_every_epoch_once_and_continue_the_run(roots: dict[str, str], mlflow_uri: str,
                                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    env = {**roots, "nnUNet_wandb_enabled": "1", "nnUNet_wandb_mode": "offline", "nnUNet_wandb_project": "nnseg_test",
           "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": "nnseg_i17"}
    real_budget = loop._apply_time_budget

    def crash_after_epoch_1(run: Any, state: Any) -> None:
        if state.current_epoch == 2:
            raise RuntimeError("simulated crash after epoch 1")
        real_budget(run, state)

    monkeypatch.setattr(loop, "_apply_time_budget", crash_after_epoch_1)
    assert nnunet("nnUNetv2_train", *TRAIN, env=env) == 1
    monkeypatch.setattr(loop, "_apply_time_budget", real_budget)
    assert nnunet("nnUNetv2_train", *TRAIN, "--c", env=env) == 0

    fold = Path(roots["nnUNet_results"]) / FOLD
    logged = load_checkpoint(fold / "checkpoint_final.pth")["logging"]
    assert len(logged["train_losses"]) == 3
    ids = load_json(fold / TRACKING_FILE)

    runs = wandb_history(fold)  # W&B: the same run id twice (offline files), epochs 0-1 then 2
    assert [r[0] for r in runs] == [ids["wandb"]["run_id"]] * 2 and ids["wandb"]["project"] == "nnseg_test"
    assert [sorted(r[1]) for r in runs] == [[0, 1], [2]]
    history = {**runs[0][1], **runs[1][1]}
    for epoch in range(3):
        assert set(EPOCH_SCALARS) | {"dice_per_class_or_region/class_1"} <= set(history[epoch])
        assert history[epoch]["train_losses"] == pytest.approx(logged["train_losses"][epoch])
        assert history[epoch]["lrs"] == pytest.approx(logged["lrs"][epoch])

    client = MlflowClient(mlflow_uri)  # MLflow: one run, FINISHED, each epoch once
    run = client.get_run(ids["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["initial_lr"] == "0.01"
    assert run.data.tags["configuration"] == "3d_fullres"
    for key in ("train_losses", "val_losses", "ema_fg_dice", "dice_per_class_or_region/class_1"):
        steps = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [s for s, _ in steps] == [0, 1, 2], key
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_losses"))
    assert [v for _, v in losses] == pytest.approx(logged["train_losses"])
    experiment = client.get_experiment_by_name("nnseg_i17")
    assert len(client.search_runs([experiment.experiment_id])) == 1

    events = EventAccumulator(str(fold / "tensorboard"))  # TensorBoard: the event files read back
    events.Reload()
    scalars = [(s.step, s.value) for s in events.Scalars("val_losses")]
    assert [s for s, _ in scalars] == [0, 1, 2]
    assert [v for _, v in scalars] == pytest.approx(logged["val_losses"], rel=1e-6)
    assert "dice_per_class_or_region/class_1" in events.Tags()["scalars"]


def test_missing_library_is_refused_before_anything_is_written(roots: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    argv = ["994", "3d_fullres", "1", "-device", "cpu", "--logger", "mlflow"]
    assert nnunet("nnUNetv2_train", *argv, env=roots) == 1
    assert "pip install nnseg[mlflow]" in capsys.readouterr().err
    assert not (Path(roots["nnUNet_results"]) / FOLD.parent / "fold_1").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)
    env = {**roots, "nnUNet_wandb_enabled": "1"}
    assert nnunet("nnUNetv2_train", "994", "3d_fullres", "1", "-device", "cpu", env=env) == 1
    err = capsys.readouterr().err
    assert "nnUNet_wandb_enabled=1 needs the 'wandb' package" in err and "pip install nnseg[wandb]" in err
    env["nnUNet_wandb_enabled"] = "yes"
    assert nnunet("nnUNetv2_train", "994", "3d_fullres", "1", "-device", "cpu", env=env) == 1
    assert "nnUNet_wandb_enabled='yes' must be 0/false (off) or 1/true (on)" in capsys.readouterr().err


def test_only_rank_0_logs(tmp_path: Path) -> None:
    env = {"nnUNet_wandb_enabled": "true"}
    assert logger_hooks(["tensorboard"], env=env, output_folder=tmp_path, resume=False, rank=1) == []
    hooks = logger_hooks(["tensorboard", "tensorboard"], env=env, output_folder=tmp_path, resume=False, rank=0)
    assert [type(h).__name__ for h in hooks] == ["TensorBoardLogger", "WandbLogger"]
    with pytest.raises(ValueError, match="unknown --logger 'neptune'"):
        logger_hooks(["neptune"], env={}, output_folder=tmp_path, resume=False)
