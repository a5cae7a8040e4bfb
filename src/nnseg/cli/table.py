"""The table of commands: nnseg subcommand name, nnU-Net v2 console-script alias, module that implements it.

A module ``nnseg.cli.<module>`` implements command ``some-name`` with two functions:
``add_some_name(parser: argparse.ArgumentParser) -> None`` and ``run_some_name(args, ctx: Context) -> int``.
Only commands that are fully implemented are listed here; ``pyproject.toml`` lists the same scripts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    script: str | None
    module: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("paths", None, "paths_cmd", "print the raw/preprocessed/results folders and where each came from"),
)


def by_name() -> dict[str, Command]:
    return {c.name: c for c in COMMANDS}


def by_script() -> dict[str, Command]:
    return {c.script: c for c in COMMANDS if c.script}
