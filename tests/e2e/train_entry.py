"""Test-only entry for ``nnUNetv2_train``: the real command plus hooks injected from the outside.

    python tests/e2e/train_entry.py [--checksums DIR] [--crash-at EPOCH:ITERATION] DATASET CONFIG FOLD [train options]

Runs as a torchrun worker (``torchrun ... tests/e2e/train_entry.py ...``) or directly (``-num_gpus N``: the hooks travel
to the spawned ranks inside the TrainRequest). ``--checksums`` records every rank's weight checksum after every step;
``--crash-at`` makes rank 0 end abruptly (``os._exit``) when training reaches that epoch and iteration.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CRASH_EXIT_CODE = 17


class CrashAt:
    """A training hook that ends the process without cleanup at (epoch, iteration): a killed job."""

    def __init__(self, epoch: int, iteration: int) -> None:
        self.epoch, self.iteration = epoch, iteration

    def on_train_start(self, run: Any, state: Any, network: Any) -> None: ...

    def on_epoch_end(self, run: Any, state: Any) -> None: ...

    def on_train_end(self, run: Any, state: Any, *, stopped_early: bool) -> None: ...

    def wrap_iterations(self, batches: Iterable[T], *, epoch: int, total: int) -> Iterator[T]:
        for index, batch in enumerate(batches):
            if epoch == self.epoch and index == self.iteration:
                print(f"nnseg: simulated crash at epoch {epoch}, iteration {index}", flush=True)
                os._exit(CRASH_EXIT_CODE)
            yield batch


def crash_hooks(epoch: int, iteration: int, info: Any) -> list[CrashAt]:
    """Rank 0 crashes; the other ranks then fail at their next collective."""
    return [CrashAt(epoch, iteration)] if info.rank == 0 else []


def main(argv: list[str]) -> int:
    from nnseg.cli.context import Context
    from nnseg.cli.main import build_parser
    from nnseg.cli.table import by_name
    from nnseg.cli.workflow.train_cmds import train_request
    from nnseg.launch.train import run_training
    from nnseg.training.ddp_checks import checksum_hooks
    from nnseg.training.distributed import dist_info_from_env

    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--checksums", default=None)
    own.add_argument("--crash-at", dest="crash_at", default=None)
    extra, rest = own.parse_known_args(argv)
    args = build_parser(by_name()["train"], prog="train_entry").parse_args(rest)
    ctx = Context(env=dict(os.environ), cwd=Path.cwd())
    request = train_request(args, ctx)
    hooks: list[Any] = []
    if extra.checksums:
        hooks.append(functools.partial(checksum_hooks, Path(extra.checksums)))
    if extra.crash_at:
        epoch, iteration = (int(v) for v in extra.crash_at.split(":"))
        hooks.append(functools.partial(crash_hooks, epoch, iteration))
    request = request.__class__(**{**request.__dict__, "hooks": tuple(hooks)})
    run_training(request, torchrun=dist_info_from_env(ctx.env))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
