"""Weights & Biases, switched on as nnU-Net 2.8.1 does (``nnUNet_wandb_enabled=1``) or with ``--logger wandb``.

Same as nnU-Net's ``WandbLogger``: project ``nnUNet_wandb_project`` [nnunet], mode ``nnUNet_wandb_mode`` [online],
run files in ``fold_X/wandb`` (removed when training starts afresh), one history step per epoch with nnU-Net's metric
names, ``current_epoch`` in the summary, and ``--c`` continuing the same run id (read from ``experiment_tracking.json``
or, for a fold nnU-Net started, from ``wandb/latest-run/run-<id>.wandb``); epochs the run already has are not logged
again.

:func:`preflight` checks the settings before anything is written: the mode is one W&B knows, and ``online`` has a
login (``WANDB_API_KEY`` or ``wandb login``) and reaches the W&B server (a cluster node without internet: use offline).
"""

from __future__ import annotations

import netrc
import os
import shutil
import socket
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nnseg.training.hooks import Hooks
from nnseg.training.loggers.common import (
    TrackingSetupError,
    cluster_job_id,
    epoch_metrics,
    hyperparameters,
    one_line_start,
    require,
    run_description,
    store_run,
    stored_run,
)

TOOL = "wandb"
_OPEN_RUNS: dict[str, Any] = {}  # runs this process started and has not finished (a training that raised)
MODES = ("online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"
CONNECT_TIMEOUT_S = 5.0
_OFFLINE = "or set nnUNet_wandb_mode=offline (upload later with `wandb sync`)"


def preflight(env: Mapping[str, str], *, chosen_by: str) -> None:
    """Refuse, in one line naming the setting and the fix, W&B settings on which ``wandb.init`` would fail or hang.

    Raises:
        MissingTrackingLibrary: wandb is not installed. TrackingSetupError: a bad mode, no login, no server.
    """
    require("wandb", extra="wandb", chosen_by=chosen_by)
    mode = env.get("nnUNet_wandb_mode") or "online"
    if mode not in MODES:
        raise TrackingSetupError(f"{chosen_by}: nnUNet_wandb_mode={mode!r} is not a W&B mode; set it to "
                                 f"{', '.join(MODES)}")
    if mode != "online":
        return
    host = env.get("WANDB_BASE_URL") or DEFAULT_HOST
    if not _has_login(env, host):
        raise TrackingSetupError(f"{chosen_by}: W&B online mode needs a login for {host}: run `wandb login` or set "
                                 f"WANDB_API_KEY, {_OFFLINE}")
    parts = urllib.parse.urlparse(host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise TrackingSetupError(f"{chosen_by}: cannot reach the W&B server {host} ({e.strerror or e}); check the "
                                 f"network or WANDB_BASE_URL, {_OFFLINE}") from None


def _has_login(env: Mapping[str, str], host: str) -> bool:
    """An API key in the environment, an identity token file, or a ``.netrc`` entry for the host (`wandb login`)."""
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    names = [env["NETRC"]] if env.get("NETRC") else [home / ".netrc", home / "_netrc"]
    machine = urllib.parse.urlparse(host).hostname or host
    for name in names:
        try:
            if Path(name).is_file() and netrc.netrc(os.fspath(name)).authenticators(machine):
                return True
        except (netrc.NetrcParseError, OSError):
            continue
    return False


def previous_run_id(folder: Path) -> str | None:
    """The W&B run id of a fold: ours (``experiment_tracking.json``) or nnU-Net's (``wandb/latest-run``)."""
    stored = stored_run(folder, TOOL)
    if stored and stored.get("run_id"):
        return str(stored["run_id"])
    latest = folder / "wandb" / "latest-run"
    if latest.is_dir():
        for path in sorted(latest.iterdir()):
            if path.suffix == ".wandb" and path.stem.startswith("run-"):
                return path.stem[4:]
    return None


class WandbLogger(Hooks):
    def __init__(self, *, env: Mapping[str, str], output_folder: Path, resume: bool, chosen_by: str) -> None:
        self.wandb = require("wandb", extra="wandb", chosen_by=chosen_by)
        self.folder, self.resume = Path(output_folder), resume
        self.project = env.get("nnUNet_wandb_project") or "nnunet"
        self.mode = env.get("nnUNet_wandb_mode") or "online"
        self.chosen_by = chosen_by
        self.fix = f"check W&B's login and network, set nnUNet_wandb_mode=offline, or drop {chosen_by}"
        self.job_id = cluster_job_id(env)
        self.run: Any = None
        self.first_step = 0

    @one_line_start
    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None:
        run_id = previous_run_id(self.folder) if self.resume else None
        stale = _OPEN_RUNS.pop(run_id or "", None)
        if stale is not None:  # an earlier training of this process raised: end its run as its exit would have
            stale.finish(exit_code=1)
        if not self.resume and (self.folder / "wandb").is_dir():
            shutil.rmtree(self.folder / "wandb")  # as nnU-Net: a fresh training starts a fresh run
        config = {**run_description(run), "plans": run.init_args["plans"], "dataset": run.init_args["dataset_json"],
                  "JobID": self.job_id, "hparas": hyperparameters(run, state), "train_config": run.config.to_json()}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=self.project, dir=str(self.folder), id=run_id, mode=self.mode,
                                   resume="allow" if self.resume else "never", config=config,
                                   reinit="create_new")  # leave other runs of this process (a notebook's) alone
        _OPEN_RUNS[self.run.id] = self.run
        self.first_step = int(self.run.step or 0) if self.resume else 0
        store_run(self.folder, TOOL, {"run_id": self.run.id, "project": self.project, "mode": self.mode})

    def on_epoch_end(self, run: Any, state: Any) -> None:
        epoch = state.current_epoch
        self.run.summary["current_epoch"] = epoch
        if epoch < self.first_step:  # the run has this epoch already (it ran past the checkpoint we resumed from)
            return
        self.run.log(epoch_metrics(state.logging, epoch), step=epoch)

    def on_train_end(self, run: Any, state: Any, *, stopped_early: bool) -> None:
        _OPEN_RUNS.pop(self.run.id, None)
        self.run.finish()
