"""Model download from a real HTTP server on 127.0.0.1: install, resume after a dropped connection, checksums."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from nnseg.cli.main import main
from nnseg.networks import build_network
from nnseg.predictions.inference.checkpoint import load_checkpoint, network_state_dict, save_checkpoint
from nnseg.sharing.download import cache_file_for, download_model
from nnseg.sharing.export_model import export_model_zip

DS = "Dataset077_Tiny"
MODEL = f"{DS}/nnUNetTrainer__nnUNetPlans__2d"
ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]], "n_conv_per_stage": [2, 2],
        "n_conv_per_stage_decoder": [2], "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path, with Range support; ``server.mode`` injects failures."""

    timeout = 5

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append(self.headers.get("Range"))  # type: ignore[attr-defined]
        data: bytes = srv.payload  # type: ignore[attr-defined]
        mode: str = srv.mode  # type: ignore[attr-defined]
        if self.path.endswith("missing.zip"):
            return self.send_error(404)
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if mode == "no_range":
            start = 0
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if mode == "drop_first" and len(srv.requests) == 1:  # type: ignore[attr-defined]
            body = body[: len(body) // 2]  # then the handler returns and the connection closes
        self.wfile.write(body)


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("src") / "results"
    folder = root / MODEL
    folder.mkdir(parents=True)
    plans = {"dataset_name": DS, "plans_name": "nnUNetPlans", "configurations": {"2d": {"architecture": ARCH}}}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 1}, "channel_names": {"0": "a"}}))
    torch.manual_seed(0)
    net = build_network(ARCH, input_channels=1, num_classes=2)
    save_checkpoint({"network_weights": net.state_dict(), "optimizer_state": None, "trainer_name": "nnUNetTrainer",
                     "init_args": {}, "inference_allowed_mirroring_axes": (0, 1)}, folder / "fold_0" / "checkpoint_final.pth")
    out = export_model_zip(root, DS, root.parent / "model.zip", configurations=["2d"], folds=[0])
    return out.output_zip.read_bytes()


@pytest.fixture
def server(model_zip: bytes):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.payload, srv.mode, srv.requests = model_zip, "ok", []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _url(srv: ThreadingHTTPServer, name: str = "model.zip") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/files/{name}"


def _fetch(srv: ThreadingHTTPServer, tmp_path: Path, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("retry_wait", 0.0)
    return download_model(_url(srv), tmp_path / "results", cache_dir=tmp_path / "cache", progress=False, timeout=5, **kw)


def _check_installed(results: Path, payload_net_seed: int = 0) -> None:
    ckpt = load_checkpoint(results / MODEL / "fold_0" / "checkpoint_final.pth")
    torch.manual_seed(payload_net_seed)
    reference = build_network(ARCH, input_channels=1, num_classes=2).state_dict()
    weights = network_state_dict(ckpt)
    assert all(torch.equal(weights[k], v) for k, v in reference.items())


def test_download_and_install(server, tmp_path: Path, model_zip: bytes) -> None:
    sha = hashlib.sha256(model_zip).hexdigest()
    installed = _fetch(server, tmp_path, sha256=sha.upper())
    assert installed == [tmp_path / "results" / MODEL]
    _check_installed(tmp_path / "results")
    assert server.requests == [None]
    assert list((tmp_path / "cache").iterdir()) == []  # the download is removed after installing


def test_dropped_connection_is_resumed_within_one_call(server, tmp_path: Path, model_zip: bytes) -> None:
    server.mode = "drop_first"
    _fetch(server, tmp_path)
    half = len(model_zip) // 2
    assert server.requests == [None, f"bytes={half}-"]
    _check_installed(tmp_path / "results")


def test_second_call_resumes_partial_file(server, tmp_path: Path, model_zip: bytes) -> None:
    server.mode = "drop_first"
    with pytest.raises(RuntimeError, match="run the same command again to resume"):
        _fetch(server, tmp_path, retries=0)
    part = cache_file_for(_url(server), tmp_path / "cache")
    assert part.read_bytes() == model_zip[: len(model_zip) // 2]
    assert not (tmp_path / "results" / MODEL).exists()
    _fetch(server, tmp_path, retries=0, sha256=hashlib.sha256(model_zip).hexdigest())
    assert server.requests == [None, f"bytes={len(model_zip) // 2}-"]
    _check_installed(tmp_path / "results")


def test_server_ignoring_range_restarts_and_complete_part_is_reused(server, tmp_path: Path, model_zip: bytes) -> None:
    part = cache_file_for(_url(server), tmp_path / "cache")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage")
    server.mode = "no_range"
    _fetch(server, tmp_path)
    assert server.requests == ["bytes=7-"]
    _check_installed(tmp_path / "results")
    server.mode, server.requests[:] = "ok", []
    part = cache_file_for(_url(server), tmp_path / "again" / "cache")
    part.parent.mkdir(parents=True)
    part.write_bytes(model_zip)  # already complete: the server answers 416 and the file is installed as it is
    _fetch(server, tmp_path / "again")
    assert server.requests == [f"bytes={len(model_zip)}-"]
    _check_installed(tmp_path / "again" / "results")


def test_sha256_mismatch_is_refused(server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 0000"):
        _fetch(server, tmp_path, sha256="0" * 64)
    assert not (tmp_path / "results" / DS).exists()
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(ValueError, match="64 hexadecimal"):
        _fetch(server, tmp_path, sha256="abc")


def test_http_errors_and_bad_urls(server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HTTP 404"):
        download_model(_url(server, "missing.zip"), tmp_path / "r", cache_dir=tmp_path / "c", progress=False, timeout=5)
    assert len(server.requests) == 1  # client errors are not retried
    with pytest.raises(ValueError, match="only http:// and https://"):
        download_model("ftp://example.org/m.zip", tmp_path / "r", progress=False)
    with pytest.raises(RuntimeError, match="did not complete after 2 attempts"):  # nothing listens on port 9 here
        download_model("http://127.0.0.1:9/m.zip", tmp_path / "r", progress=False, timeout=2, retries=1, retry_wait=0)


def test_cli_download_model(server, tmp_path: Path, roots_env: dict[str, str], model_zip: bytes, capsys) -> None:
    env = dict(roots_env, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    rc = main(["download-model", _url(server), "--sha256", hashlib.sha256(model_zip).hexdigest()], env=env, cwd=tmp_path)
    assert rc == 0, capsys.readouterr().err
    _check_installed(Path(roots_env["nnUNet_results"]))
    assert MODEL in capsys.readouterr().out
    rc = main(["download-model", _url(server), "--sha256", "1" * 64], env=env, cwd=tmp_path)
    assert rc == 1 and "SHA-256" in capsys.readouterr().err
