"""``nnseg paths``."""

from __future__ import annotations

import argparse

from nnseg.cli.context import Context
from nnseg.paths import list_datasets


def add_paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", action="store_true", help="also list the datasets found in the three folders")


def run_paths(args: argparse.Namespace, ctx: Context) -> int:
    roots = ctx.roots(announce=False)  # what it prints is the explanation the announcement points to
    print(roots.describe())
    if args.datasets:
        names = list_datasets(roots)
        print("datasets:", ", ".join(names) if names else "none")
    return 0
