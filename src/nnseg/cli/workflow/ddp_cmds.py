"""The torchrun entry points' command lines: ``python -m nnseg.train`` and ``python -m nnseg.predict``.

* ``torchrun --nnodes M --nproc-per-node N -m nnseg.train DATASET CONFIG FOLD ...`` is the ``train`` command run as
  one rank (the ranks come from torchrun's environment; :func:`nnseg.launch.train.run_training` does the rest).
* ``torchrun --nproc-per-node N -m nnseg.predict -i ... -o ... -d ... -c ...`` predicts with every rank taking the
  cases ``sorted[rank::world]`` (combined with ``-num_parts/-part_id``) into one output folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nnseg.cli.context import Context
from nnseg.training.distributed import DistInfo, dist_info_from_env, rank_part


def shard_predict_args(args: argparse.Namespace, info: DistInfo | None) -> argparse.Namespace:
    """This rank's ``-part_id/-num_parts`` (:func:`~nnseg.training.distributed.rank_part`); on CUDA every rank
    predicts on ``cuda:LOCAL_RANK``."""
    from nnseg.devices import auto_device

    part_id, num_parts = rank_part(args.num_parts, args.part_id, info)
    if info is None:
        return args
    out = argparse.Namespace(**vars(args))
    out.part_id, out.num_parts = part_id, num_parts
    device = auto_device() if args.device in (None, "auto") else args.device
    if device.split(":")[0] == "cuda":
        out.device = f"cuda:{info.local_rank}"
    return out


def main_train(argv: Sequence[str] | None = None) -> int:
    """``python -m nnseg.train`` (under torchrun): the ``train`` command's arguments and runner."""
    from nnseg.cli.main import run_command
    from nnseg.cli.table import by_name

    return run_command(by_name()["train"], list(sys.argv[1:] if argv is None else argv), prog="nnseg.train")


def main_predict(argv: Sequence[str] | None = None) -> int:
    """``python -m nnseg.predict`` (under torchrun): ``predict`` with the cases sharded over the ranks."""
    from nnseg.cli.main import USER_ERRORS, build_parser, error_line
    from nnseg.cli.table import by_name

    prog = "nnseg.predict"
    cmd = by_name()["predict"]
    args = build_parser(cmd, prog=prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    ctx = Context(env=dict(os.environ), cwd=Path.cwd())
    try:
        from nnseg.cli.workflow.predict_cmds import run_predict

        return int(run_predict(shard_predict_args(args, dist_info_from_env(ctx.env)), ctx) or 0)
    except (OSError, *USER_ERRORS) as e:
        if ctx.env.get("NNSEG_DEBUG"):
            raise
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        return 1
