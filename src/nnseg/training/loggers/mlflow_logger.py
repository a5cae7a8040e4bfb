"""MLflow (``--logger mlflow``): one MLflow run per fold on the server of ``MLFLOW_TRACKING_URI``.

Experiment ``MLFLOW_EXPERIMENT_NAME`` [nnunet]; run name ``<Trainer>__<Plans>__<configuration>/fold_X``; nnU-Net's
hyperparameters and the TrainConfig as parameters; nnU-Net's per-epoch metrics with ``step = epoch``. The run id is
kept in the fold's ``experiment_tracking.json`` so ``--c`` continues the same run (epochs it already has are skipped).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nnseg.training.hooks import Hooks
from nnseg.training.loggers.common import (
    cluster_job_id,
    epoch_metrics,
    hyperparameters,
    require,
    run_description,
    store_run,
    stored_run,
)

TOOL = "mlflow"
DEFAULT_EXPERIMENT = "nnunet"


class MlflowLogger(Hooks):
    def __init__(self, *, env: Mapping[str, str], output_folder: Path, resume: bool, chosen_by: str) -> None:
        mlflow = require("mlflow", extra="mlflow", chosen_by=chosen_by)
        from mlflow.tracking import MlflowClient

        self.uri = env.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
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
