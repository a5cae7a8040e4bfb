"""MLflow (``--logger mlflow``): one MLflow run per fold on the server of ``MLFLOW_TRACKING_URI``.

Experiment ``MLFLOW_EXPERIMENT_NAME`` [nnunet]; run name ``<Trainer>__<Plans>__<configuration>/fold_X``; nnU-Net's
hyperparameters and the TrainConfig as parameters; nnU-Net's per-epoch metrics with ``step = epoch``. The run id is
kept in the fold's ``experiment_tracking.json`` so ``--c`` continues the same run (epochs it already has are skipped).

:func:`preflight` checks the tracking URI before anything is written: MLflow 3 refuses file stores (``file:///...``,
a plain folder) unless ``MLFLOW_ALLOW_FILE_STORE=true``; a server must answer; any other store must open.
"""

from __future__ import annotations

import base64
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nnseg.training.hooks import Hooks
from nnseg.training.loggers.common import (
    TrackingSetupError,
    cluster_job_id,
    epoch_metrics,
    first_line,
    hyperparameters,
    one_line_start,
    require,
    run_description,
    store_run,
    stored_run,
)

TOOL = "mlflow"
DEFAULT_EXPERIMENT = "nnunet"
PROBE_TIMEOUT_S = 5.0
_SERVER_HINT = "start it (`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`)"


def tracking_uri(env: Mapping[str, str], mlflow: Any) -> str:
    """``MLFLOW_TRACKING_URI``, else MLflow's default (``sqlite:///mlflow.db`` in the working folder for MLflow 3)."""
    return env.get("MLFLOW_TRACKING_URI") or str(mlflow.get_tracking_uri())


def preflight(env: Mapping[str, str], *, chosen_by: str) -> None:
    """Refuse, in one line naming the setting and the fix, a tracking URI MLflow would fail on when training starts.

    Raises:
        MissingTrackingLibrary: mlflow is not installed. TrackingSetupError: the URI cannot be used.
    """
    mlflow = require("mlflow", extra="mlflow", chosen_by=chosen_by)
    uri = tracking_uri(env, mlflow)
    scheme = "" if re.match(r"^[A-Za-z]:[\\/]", uri) else urllib.parse.urlparse(uri).scheme  # C:\... is a folder
    if scheme in ("http", "https"):
        _probe_server(uri, env, env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        return
    if scheme in ("", "file") and _file_store_refused(env):
        raise TrackingSetupError(
            f"{chosen_by}: MLFLOW_TRACKING_URI={uri} is a file store, which MLflow {mlflow.__version__} refuses; use a "
            "database such as MLFLOW_TRACKING_URI=sqlite:///mlflow.db (or a server, http://HOST:5000), or set "
            "MLFLOW_ALLOW_FILE_STORE=true to keep the file store")
    from mlflow.tracking import MlflowClient

    try:
        with warnings.catch_warnings():  # MLflow's own deprecation warnings (SQLAlchemy's) are not the user's problem
            warnings.simplefilter("ignore")
            MlflowClient(tracking_uri=uri).get_experiment_by_name(env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for a bad store; each becomes the one line
        raise TrackingSetupError(f"{chosen_by}: MLflow {mlflow.__version__} cannot use MLFLOW_TRACKING_URI={uri} "
                                 f"({first_line(e)}); set it to a store that works, e.g. sqlite:///mlflow.db or "
                                 "http://HOST:5000") from None


def _file_store_refused(env: Mapping[str, str]) -> bool:
    """Whether this MLflow refuses file stores (MLflow >= 3.7 knows MLFLOW_ALLOW_FILE_STORE, default false)."""
    import mlflow.environment_variables as variables

    if not hasattr(variables, "MLFLOW_ALLOW_FILE_STORE"):
        return False
    return str(env.get("MLFLOW_ALLOW_FILE_STORE", "")).strip().lower() not in ("true", "1")


def _probe_server(uri: str, env: Mapping[str, str], experiment: str) -> None:
    """One REST call (as MlflowClient.get_experiment_by_name makes) with a short timeout instead of MLflow's minutes
    of retries; 404 (no such experiment yet) is a working server."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}")
    if env.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {env['MLFLOW_TRACKING_TOKEN']}")
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(pair).decode()}")
    insecure = str(env.get("MLFLOW_TRACKING_INSECURE_TLS", "")).lower() in ("true", "1")
    context = ssl._create_unverified_context() if insecure else None  # noqa: S323 - the user's own setting
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S, context=context):
            return
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return
        if e.code in (401, 403):
            raise TrackingSetupError(f"the MLflow server MLFLOW_TRACKING_URI={uri} refuses access (HTTP {e.code}); set "
                                     "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
        raise TrackingSetupError(f"MLFLOW_TRACKING_URI={uri} answers HTTP {e.code} to MLflow's API (is it an MLflow "
                                 "server?); fix MLFLOW_TRACKING_URI") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise TrackingSetupError(f"cannot reach the MLflow server MLFLOW_TRACKING_URI={uri} ({why}); {_SERVER_HINT} "
                                 "or fix MLFLOW_TRACKING_URI (a local store needs no server: sqlite:///mlflow.db)") from None


class MlflowLogger(Hooks):
    def __init__(self, *, env: Mapping[str, str], output_folder: Path, resume: bool, chosen_by: str) -> None:
        mlflow = require("mlflow", extra="mlflow", chosen_by=chosen_by)
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(env, mlflow)
        self.chosen_by = chosen_by
        self.fix = f"check the server or store MLFLOW_TRACKING_URI={self.uri}, or drop {chosen_by}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.folder, self.resume, self.job_id = Path(output_folder), resume, cluster_job_id(env)
        self.run_id = ""
        self.next_step = 0

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found is not None else self.client.create_experiment(self.experiment)

    def _new_run(self, run: Any, state: Any) -> str:
        from mlflow.entities import Param

        info = run_description(run)
        tags = {key: str(value) for key, value in info.items()}
        if self.job_id:
            tags["JobID"] = self.job_id
        created = self.client.create_run(self._experiment_id(), run_name=f"{self.folder.parent.name}/{self.folder.name}",
                                         tags=tags)
        params = {**hyperparameters(run, state), **{f"train_config.{k}": v for k, v in run.config.to_json().items()}}
        self.client.log_batch(created.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return str(created.info.run_id)

    @one_line_start
    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None:
        stored = stored_run(self.folder, TOOL) if self.resume else None
        if stored and stored.get("tracking_uri") == self.uri and stored.get("run_id"):
            self.run_id = str(stored["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            steps = [m.step for m in self.client.get_metric_history(self.run_id, "train_losses")]
            self.next_step = max(steps) + 1 if steps else 0
        else:
            self.run_id, self.next_step = self._new_run(run, state), 0
        print(f"nnseg: MLflow run {self.run_id} (experiment {self.experiment!r}) on {self.uri}")
        store_run(self.folder, TOOL, {"run_id": self.run_id, "tracking_uri": self.uri, "experiment": self.experiment})

    def on_epoch_end(self, run: Any, state: Any) -> None:
        from mlflow.entities import Metric

        epoch = state.current_epoch
        if epoch < self.next_step:
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, epoch) for k, v in epoch_metrics(state.logging, epoch).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_train_end(self, run: Any, state: Any, *, stopped_early: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")
