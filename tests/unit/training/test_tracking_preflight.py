"""Issue 23.12: each tracking back-end's start-up refusal is one line naming the setting and the fix, given before
anything is written (MLflow 3 refused `MLFLOW_TRACKING_URI=file:///...` with a traceback once training had started)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from nnseg.cli.main import main
from nnseg.training.loggers import TrackingSetupError, check_loggers

mlflow = pytest.importorskip("mlflow")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_error(env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], *logger: str) -> str:
    """``nnUNetv2_train 1 3d_fullres 0 --logger ...``: exit 1 with exactly one line on stderr and nothing written."""
    argv = ["train", "1", "3d_fullres", "0", "-device", "cpu", *[a for name in logger for a in ("--logger", name)]]
    assert main(argv, env=env, cwd=tmp_path) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnseg train: error: ") and "Traceback" not in err, err
    assert {p.name for p in tmp_path.iterdir()} <= {"raw", "preprocessed", "results", "home"}, err  # no mlflow.db
    assert not any(Path(env["nnUNet_results"]).iterdir())
    return lines[0]


def test_mlflow_file_store_refused_naming_the_uri_and_both_fixes(roots_env: dict[str, str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = tmp_path / "mlruns"
    for uri in (store.as_uri(), str(store)):
        line = _train_error({**roots_env, "MLFLOW_TRACKING_URI": uri}, tmp_path, capsys, "mlflow")
        assert f"--logger mlflow: MLFLOW_TRACKING_URI={uri} is a file store" in line, line
        assert "sqlite:///mlflow.db" in line and "MLFLOW_ALLOW_FILE_STORE=true" in line, line
        assert not store.exists()


def test_mlflow_file_store_allowed_and_sqlite_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow itself reads the process environment
    env = {"MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}
    assert check_loggers(["mlflow"], env=env) == ["mlflow"]
    assert check_loggers(["mlflow"], env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}) == ["mlflow"]


def test_mlflow_server_that_does_not_answer_is_refused_at_once(roots_env: dict[str, str], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    line = _train_error({**roots_env, "MLFLOW_TRACKING_URI": uri}, tmp_path, capsys, "mlflow")
    assert f"cannot reach the MLflow server MLFLOW_TRACKING_URI={uri}" in line and "mlflow server" in line, line
    with pytest.raises(TrackingSetupError, match="cannot use MLFLOW_TRACKING_URI=ftp://nowhere"):
        check_loggers(["mlflow"], env={"MLFLOW_TRACKING_URI": "ftp://nowhere"})


def test_wandb_mode_login_and_server_refusals(roots_env: dict[str, str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    env = {**roots_env, "nnUNet_wandb_enabled": "1"}
    line = _train_error({**env, "nnUNet_wandb_mode": "ofline"}, tmp_path, capsys)
    assert "nnUNet_wandb_enabled=1: nnUNet_wandb_mode='ofline' is not a W&B mode" in line and "offline" in line
    line = _train_error(env, tmp_path, capsys)  # online (nnU-Net's default) without a login
    assert "needs a login for https://api.wandb.ai: run `wandb login` or set WANDB_API_KEY" in line, line
    assert "nnUNet_wandb_mode=offline" in line
    server = f"http://127.0.0.1:{_closed_port()}"
    netrc = Path(roots_env["HOME"]) / ".netrc"
    netrc.parent.mkdir(parents=True, exist_ok=True)
    netrc.write_text("machine 127.0.0.1\n  login user\n  password x" + "0" * 39 + "\n")
    netrc.chmod(0o600)
    line = _train_error({**env, "WANDB_BASE_URL": server}, tmp_path, capsys, "wandb")
    assert f"--logger wandb: cannot reach the W&B server {server}" in line and "nnUNet_wandb_mode=offline" in line
    netrc.unlink()
    netrc.parent.rmdir()
    assert check_loggers([], env={**env, "nnUNet_wandb_mode": "offline"}) == ["wandb"]


def test_tensorboard_that_torch_cannot_load_is_one_line(roots_env: dict[str, str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    assert check_loggers(["tensorboard"], env={}) == ["tensorboard"]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it now raises ImportError
    line = _train_error(roots_env, tmp_path, capsys, "tensorboard")
    assert "--logger tensorboard: torch cannot load TensorBoard" in line and "pip install -U nnseg[tensorboard]" in line


def test_a_failure_after_the_preflight_is_still_one_line(tmp_path: Path) -> None:
    """A server gone between the preflight and the run's start: one TrackingSetupError line, the cause kept."""
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from nnseg.training.loggers.mlflow_logger import MlflowLogger

    logger = MlflowLogger(env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, output_folder=tmp_path / "fold_0",
                          resume=False, chosen_by="--logger mlflow")
    run = SimpleNamespace(init_args={"plans": {"dataset_name": "D", "plans_name": "P"}, "configuration": "2d",
                                     "fold": 0}, trainer_name="T")

    class _Gone:  # every call of the client fails with ``error``
        def __init__(self, error: Exception) -> None:
            self.error = error

        def __getattr__(self, name: str) -> object:
            raise self.error

    logger.client = _Gone(MlflowException("API request to endpoint failed\nwith a long story"))  # type: ignore[assignment]
    with pytest.raises(TrackingSetupError) as caught:
        logger.on_train_start(run, SimpleNamespace(), None)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("--logger mlflow: could not start the run (API request to endpoint")
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:9" in text and isinstance(caught.value.__cause__, MlflowException)
    logger.client = _Gone(OSError(28, "No space left on device"))  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space left") as disk:
        logger.on_train_start(run, SimpleNamespace(), None)
    assert not isinstance(disk.value, TrackingSetupError)  # the disk's own one line (fs_errors) is kept
    assert not (tmp_path / "fold_0").exists()
