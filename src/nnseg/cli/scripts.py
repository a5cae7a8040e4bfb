"""Console-script entry points named like nnU-Net v2's (``nnUNetv2_predict`` ...), resolved lazily.

``pyproject.toml`` points ``nnUNetv2_X = "nnseg.cli.scripts:nnUNetv2_X"``; this module builds that
function on first access from the command table, so each script and ``nnseg <command>`` share one parser.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from nnseg.cli.table import by_script


def __getattr__(name: str) -> Callable[[], None]:
    commands = by_script()
    if name not in commands:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cmd = commands[name]

    def entry() -> None:
        from nnseg.cli.main import run_command

        sys.exit(run_command(cmd, sys.argv[1:], prog=name))

    entry.__name__ = name
    return entry
