"""The hooks a training run gets: one place to add a logger (every run, single process or DDP, goes through here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from nnseg.training.distributed import DistInfo
from nnseg.training.hooks import DebugJson, HookList, Hooks, ProgressBar, ProgressPlot, TextLog
from nnseg.training.run_spec import RunSpec
from nnseg.training.summary_hook import NetworkSummary

SINGLE_PROCESS = DistInfo(rank=0, world_size=1)


def standard_hooks(run: RunSpec, *, info: DistInfo = SINGLE_PROCESS, progress: bool = True,
                   extra: Sequence[Hooks] = (), first_log_line: str | None = None) -> HookList:
    """The text log, progress bar and plot, debug.json and network summary (rank 0 only), then ``extra``.

    Args:
        run: the fold's run (its ``output_folder`` receives the files).
        info: this process's rank; ranks other than 0 write nothing and only get ``extra``.
        progress: show a tqdm bar per epoch on a terminal.
        extra: further hooks of this rank (e.g. from :attr:`TrainRequest.hooks`).
        first_log_line: written to the text log before training starts (e.g. the DDP layout).
    """
    hooks: list[Hooks] = []
    if info.is_main:
        log = TextLog(run.output_folder)
        if first_log_line:
            log.write(first_log_line)
        hooks = [log, ProgressBar(enabled=None if progress else False), ProgressPlot(run.output_folder),
                 DebugJson(run.output_folder), NetworkSummary(run.output_folder)]
    return HookList([*hooks, *extra])


def logger_hook_factory(info: DistInfo, *, names: Sequence[str], env: Mapping[str, str], output_folder: Path,
                        resume: bool) -> list[Hooks]:
    """The experiment-tracking hooks of one rank (a :data:`~nnseg.launch.request.HookFactory` once the keywords are
    bound with ``functools.partial``): W&B, MLflow, TensorBoard as chosen; only rank 0 logs."""
    from nnseg.training.loggers import logger_hooks

    return logger_hooks(names, env=env, output_folder=output_folder, resume=resume, rank=info.rank)
