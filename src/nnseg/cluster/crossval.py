"""``nnseg cross-validate``: train every fold of every configuration (one task per fold), then find the best model.

Each fold is a :class:`~nnseg.launch.request.TrainRequest` run with ``--c`` semantics: a fold whose
``checkpoint_final.pth`` and ``validation/summary.json`` exist is skipped, an interrupted one resumes from its latest
checkpoint (checkpoints are written atomically), so a task lost with its worker continues elsewhere where it stopped
and a rerun of the command only does what is missing. Folds are trained with ``--npz`` (find-best ensembles the
cross-validation probabilities). Tasks ask for ``GPU: 1`` on GPUs; on the CPU a training task asks for a whole
worker's ``MEMORY`` (it uses every core of its machine). Without ``--cluster`` the folds run one after another here.
Then :func:`~nnseg.metrics.best_config.find_best_configuration` runs as ``nnUNetv2_find_best_configuration`` would.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg.cluster.connect import GPU, open_client, worker_resources
from nnseg.cluster.memory import train_bytes
from nnseg.cluster.tasks import DEFAULT_RETRIES, memory_capacities, run_tasks, task_resources
from nnseg.launch.request import TrainOutcome, TrainRequest
from nnseg.launch.train import run_training
from nnseg.metrics.best_config import find_best_configuration


@dataclass(frozen=True)
class CrossValidation:
    """The folds x configurations to train (``template`` gives everything but configuration and fold) and how to
    select the best model afterwards."""

    template: TrainRequest
    configurations: tuple[str, ...]
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    allow_ensembling: bool = True
    num_processes: int = 8
    raw_root: Path | None = None

    def requests(self) -> list[TrainRequest]:
        """One request per (configuration, fold), configuration-major; ``--c`` and ``--npz`` set."""
        return [dataclasses.replace(self.template, configuration=c, fold=f, continue_training=True,
                                    save_probabilities=True, validation_only=False, validate_best=False)
                for c in self.configurations for f in self.folds]


def fold_is_finished(request: TrainRequest) -> bool:
    """Trained and validated: ``checkpoint_final.pth`` and ``validation/summary.json`` exist."""
    folder = request.fold_folder
    return (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file()


def _current_task_key() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().get_current_task())
    except (ImportError, ValueError):  # not in a Dask worker (no --cluster)
        return None


def _take_over_lost_lock(request: TrainRequest, note: str) -> None:
    """Remove the fold lock that an earlier run of this same Dask task left on another host (the scheduler reran
    the task because that worker was lost; the lock module can only check owners on its own host)."""
    from nnseg.locks import LOCK_NAME, read_lock

    path = request.fold_folder / LOCK_NAME
    owner = read_lock(path) if path.is_file() else None
    if owner and str(owner.get("purpose", "")).endswith(note) and owner.get("host") != socket.gethostname():
        path.unlink(missing_ok=True)
        print(f"note: took over the lock of lost worker {owner.get('host')} (same Dask task {note}): {path}",
              file=sys.stderr)


def train_fold_task(request: TrainRequest) -> TrainOutcome:
    """One fold (worker side): skipped when finished, else trained or resumed (``--c``) and validated."""
    if fold_is_finished(request):
        return TrainOutcome(request.fold_folder, request.fold_folder / "validation", None)
    key = _current_task_key()
    note = f"[dask task {key}]" if key else ""
    if note:
        _take_over_lost_lock(request, note)
    return run_training(dataclasses.replace(request, continue_training=True, progress=False, lock_note=note))


def _fold_memory(request: TrainRequest) -> int:
    from nnseg.plans.schema import load_plans
    from nnseg.raw.dataset_json import load_dataset_json

    pre = Path(request.preprocessed_dataset_folder)
    plans, spec = load_plans(pre / f"{request.plans_identifier}.json"), load_dataset_json(pre / "dataset.json")
    classes = len(spec.foreground_regions) if spec.has_regions else len(spec.all_labels)
    return train_bytes(plans.configuration(request.configuration), input_channels=spec.num_channels,
                       num_classes=classes, batch_size=request.config.batch_size)


def _resources(client: Any, request: TrainRequest) -> dict[str, float] | None:
    capacities = memory_capacities(client)
    workers = worker_resources(client).values()
    gpu = request.device.startswith("cuda") or (request.device == "auto" and any(GPU in w for w in workers))
    memory = _fold_memory(request)
    if not gpu and capacities and all(c is not None for c in capacities.values()):
        memory = max(memory, int(min(c for c in capacities.values() if c is not None)))  # one per CPU worker
    return task_resources(client, memory=memory, gpu=gpu, capacities=capacities)


def _name(request: TrainRequest) -> str:
    return f"{request.configuration}-fold{request.fold}"


def train_folds(requests: Sequence[TrainRequest], *, cluster: str | None, retries: int = DEFAULT_RETRIES,
                progress: bool = True) -> list[TrainOutcome]:
    """Train the requests as Dask tasks on ``cluster`` (or here, one after another, without one)."""
    if cluster is None:
        return [train_fold_task(r) for r in requests]
    out: list[TrainOutcome | None] = [None] * len(requests)
    with open_client(cluster) as client:
        resources = [_resources(client, r) for r in requests]
        for i, outcome in run_tasks(client, train_fold_task, list(requests), names=[_name(r) for r in requests],
                                    resources=resources, retries=retries, desc="train", what="fold",
                                    hint=" Finished folds are kept; fix the cause, then rerun (they are skipped)",
                                    progress=progress):
            out[i] = outcome
            print(f"nnseg: {_name(requests[i])} done ({outcome.output_folder})", file=sys.stderr)
    return [o for o in out if o is not None]


def cross_validate(cv: CrossValidation, *, cluster: str | None = None, retries: int = DEFAULT_RETRIES,
                   progress: bool = True) -> dict[str, Any]:
    """Train every fold of every configuration, then select the best model / ensemble.

    Returns:
        find-best's ``inference_information.json`` content (the instructions are written next to it).
    """
    template = cv.template
    train_folds(cv.requests(), cluster=cluster, retries=retries, progress=progress)
    results = Path(template.results_dataset_folder)
    return find_best_configuration(results.name, results.parent, Path(template.preprocessed_dataset_folder).parent,
                                   configurations=cv.configurations, trainers=(template.trainer_name,),
                                   plans=(template.plans_identifier,), folds=cv.folds,
                                   allow_ensembling=cv.allow_ensembling, num_processes=cv.num_processes,
                                   raw_root=cv.raw_root)
