"""Start ``nnseg serve``: check the binding, load the models once per device, run uvicorn, clean up.

Example:
    >>> serve(["results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"], port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg.locks import LOCK_NAME, acquire_lock, owner_alive, read_lock
from nnseg.serve.auth import LOOPBACK_NAMES, RequestGuard, check_binding, resolve_token
from nnseg.serve.automatic.jobs import JobQueue
from nnseg.serve.memory import ServerMemory
from nnseg.serve.timeouts import timed_h11_protocol
from nnseg.serve.automatic.models import ModelOptions, load_models
from nnseg.serve.automatic.uploads import ImageStore

log = logging.getLogger(__name__)
WORK_PREFIX = "nnseg-serve-"


@dataclass(frozen=True)
class ServerOptions:
    """Limits of the server (the models' options are :class:`~nnseg.serve.automatic.models.ModelOptions`)."""

    max_upload_mb: float = 512.0
    max_queued: int = 16
    result_ttl_s: float = 600.0
    log_level: str = "info"
    max_unzipped_mb: float | None = None  # DICOM zips unpacked at once, all jobs (None: 16 x max_upload_mb)
    request_timeout_s: float = 20.0  # headers must arrive within it; bodies too, then at >= MIN_BODY_RATE
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the loopback ones (token-less servers)
    allowed_origins: tuple[str, ...] = ()  # browser origins (scheme://host:port) allowed to POST, PUT, DELETE


def resolve_devices(devices: Sequence[str] | None) -> list[str]:
    """The devices to serve on, checked; default: ``cuda`` if available, else ``cpu``.

    Raises:
        ValueError: an unknown or unavailable device, or one given twice.
    """
    from nnseg.predictions.run.predict import resolve_device

    chosen = [str(resolve_device(d)) for d in (devices or [None])]  # type: ignore[list-item]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"device(s) {chosen} given more than once; each device gets one worker, list it once")
    return chosen


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port (0: any free port)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def build_state(models: Sequence[str | Path], *, devices: Sequence[str], token: str | None, options: ModelOptions,
                limits: ServerOptions, work_dir: Path) -> Any:
    """Load the models on every device and start the queue's workers; returns the :class:`ServeState`."""
    from nnseg.serve.automatic.service import ServeState

    from nnseg.serve.automatic.dicom_upload import UNZIPPED_PER_UPLOAD, UnzipBudget

    per_device = [load_models(models, device=d, options=options) for d in devices]
    memory = ServerMemory.resolve(options.max_memory_gb, devices[0])  # after loading: what the models left free
    for served in (m for device_models in per_device for m in device_models.values()):
        served.memory = memory
    store = ImageStore(work_dir / "uploads")
    queue = JobQueue(per_device, work_dir=work_dir / "jobs", max_queued=limits.max_queued,
                     result_ttl_s=limits.result_ttl_s, also_sweep=store.sweep, memory=memory)
    upload = int(limits.max_upload_mb * 2**20)
    unzipped = UNZIPPED_PER_UPLOAD * upload if limits.max_unzipped_mb is None else int(limits.max_unzipped_mb * 2**20)
    return ServeState(models=per_device[0], queue=queue, store=store, token=token, max_upload_bytes=upload,
                      work_dir=work_dir, unzip=UnzipBudget(unzipped, work_dir))


def serve(models: Sequence[str | Path], *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          devices: Sequence[str] | None = None, options: ModelOptions | None = None,
          limits: ServerOptions | None = None, interactive: Any = None) -> None:
    """Serve ``models`` (model folders, or ``NAME=FOLDER``) until interrupted.

    Args:
        host, port: where to listen (port 0: any free port; the address is printed).
        token: bearer token (default ``$NNSEG_SERVE_TOKEN``); required unless ``host`` is loopback.
        devices: one worker per device, each with its own copy of the models (default: cuda if available, else cpu).
        options: folds, checkpoint, precision, TTA, step size, backend (as ``nnseg predict``).
        limits: upload size, queue length, how long results are kept.
        interactive: an :class:`~nnseg.serve.interactive.sessions.InteractiveOptions`: also serve that nnInteractive
            model folder with nnInteractive's protocol (on the first device), for ``nninteractive-client``.

    Raises:
        ValueError: no models, no token on a non-loopback host, bad options. FileNotFoundError: a model is missing.
        ImportError: fastapi/uvicorn missing (``pip install nnseg[serve]``).
    """
    from nnseg.serve.app import _fastapi, create_app

    if not models and interactive is None:
        raise ValueError("no models to serve; pass model folders with --models and/or --interactive")
    token = resolve_token(token)
    check_binding(host, token)
    _fastapi()
    uvicorn = _uvicorn()
    chosen = resolve_devices(devices)
    limits = limits or ServerOptions()
    sock = _bind(host, port)
    remove_stale_work_dirs(Path(tempfile.gettempdir()))
    work_dir = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    acquire_lock(work_dir, purpose="nnseg serve")
    state = sessions = None
    started = False
    try:
        model = _interactive_model(interactive, chosen[0])
        state = build_state(models, devices=chosen, token=token, options=options or ModelOptions(), limits=limits,
                            work_dir=work_dir)
        sessions = _interactive_sessions(model, interactive, state.queue.memory)
        app = create_app(state, devices=chosen, guard=request_guard(host, token, limits), interactive=sessions)
        bound = sock.getsockname()
        extra = f", interactive {interactive.folder}" if interactive is not None else ""
        print(f"nnseg serve: http://{host}:{bound[1]}/ models {sorted(state.models)}{extra} on {chosen} "
              f"(MONAI Label: http://{host}:{bound[1]}/info/)", flush=True)
        _print_budget(state.queue.memory, sessions)
        config = uvicorn.Config(app, log_level=limits.log_level, timeout_graceful_shutdown=10,
                                http=timed_h11_protocol(limits.request_timeout_s))
        started = True
        _run_until_signal(uvicorn.Server(config), sock)
    finally:
        if sessions is not None:
            sessions.close()
        if state is not None:
            state.queue.shutdown()
            state.store.clear()
        shutil.rmtree(work_dir, ignore_errors=True)
        sock.close()
        if started:  # a failed start says only what failed (the caller prints it); its files are removed all the same
            print("nnseg serve: stopped, temporary files removed", file=sys.stderr, flush=True)


def _print_budget(memory: ServerMemory | None, sessions: Any = None) -> None:
    if memory is None:
        return
    refused = "a case that does not fit it even in bounded memory"
    held = ""
    if sessions is not None:
        held = (f"; interactive predictions hold {sessions.budget.shared / 2**30:.2f} GB, each interactive session "
                "its image's estimate")
        refused += ", or an interactive image whose estimate does not,"
    print(f"nnseg serve: memory budget {memory.total / 2**30:.2f} GB ({memory.source}){held}; {refused} is answered "
          "413", flush=True)


def remove_stale_work_dirs(tmp: Path) -> list[Path]:
    """Delete ``nnseg-serve-*`` folders of servers that died without cleaning up (SIGKILL, power loss): their lock
    names a process of this host that no longer runs. Folders of live servers, of other hosts or users, and without
    a lock are left alone. Returns the folders removed."""
    removed = []
    for folder in sorted(tmp.glob(f"{WORK_PREFIX}*")):
        try:
            if not folder.is_dir() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
        except (OSError, AttributeError):  # AttributeError: no getuid on Windows (tempdirs are per user there)
            continue
        owner = read_lock(folder / LOCK_NAME)
        if owner is not None and owner_alive(owner) is False:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            print(f"nnseg serve: removed {folder}, left by a server (pid {owner.get('pid')}) that is no longer "
                  "running", file=sys.stderr, flush=True)
    return removed


def request_guard(host: str, token: str | None, limits: ServerOptions) -> RequestGuard:
    """Which Host names and Origins the server accepts (see :class:`nnseg.serve.auth.RequestGuard`)."""
    hosts = None if token is not None else {*LOOPBACK_NAMES, host.strip("[]").lower(), *limits.allowed_hosts}
    return RequestGuard(hosts=hosts, origins=set(limits.allowed_origins), body_timeout_s=limits.request_timeout_s)


def _interactive_model(options: Any, device: str) -> Any:
    """The ``--interactive`` model, loaded before the server's budget is measured (None without one)."""
    if options is None:
        return None
    from nnseg.interactive import load_interactive_model

    return load_interactive_model(options.folder, fold=options.fold, device=device)


def _interactive_sessions(model: Any, options: Any, memory: ServerMemory | None) -> Any:
    """The session registry of the ``--interactive`` model, drawing from the server's budget (None without one)."""
    if model is None:
        return None
    from nnseg.serve.interactive.sessions import SessionRegistry

    return SessionRegistry(model, options, memory)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_until_signal(server: Any, sock: socket.socket) -> None:
    """Run uvicorn; SIGINT / SIGTERM end it gracefully (uvicorn re-raises them afterwards: caught, so we clean up)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if in_main else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError:
        raise ImportError("nnseg serve needs uvicorn: `pip install nnseg[serve]`") from None
    return uvicorn
