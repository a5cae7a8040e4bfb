"""``nnseg <command>`` dispatcher and the shared runner of every ``nnUNetv2_*`` script."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnseg.cli.context import Context
from nnseg.cli.table import COMMANDS, Command, by_name
from nnseg.extensions import load_extensions
from nnseg.fs_errors import describe_os_error, is_system_error

USER_ERRORS = (ImportError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError, PermissionError,
               RuntimeError, OSError)


def _functions(cmd: Command):  # type: ignore[no-untyped-def]
    module = importlib.import_module(f"nnseg.cli.{cmd.module}")
    snake = cmd.name.replace("-", "_")
    return getattr(module, f"add_{snake}"), getattr(module, f"run_{snake}")


def build_parser(cmd: Command, *, prog: str) -> argparse.ArgumentParser:
    add, _ = _functions(cmd)
    parser = argparse.ArgumentParser(prog=prog, description=cmd.help, formatter_class=argparse.RawDescriptionHelpFormatter)
    add(parser)
    return parser


def run_command(cmd: Command, argv: Sequence[str], *, prog: str, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> int:
    """Parse ``argv`` for ``cmd`` and run it; user errors print one clear line and return exit code 1."""
    parser = build_parser(cmd, prog=prog)
    args = parser.parse_args(list(argv))
    _, run = _functions(cmd)
    ctx = Context(env=dict(os.environ) if env is None else env, cwd=Path.cwd() if cwd is None else cwd)
    try:
        load_extensions(ctx.env)  # the user's registered components (docs/EXTENSIONS.md), before anything is written
        return int(run(args, ctx) or 0)
    except (OSError, *USER_ERRORS) as e:  # OSError of any kind too (disk full, read-only, permission)
        if ctx.env.get("NNSEG_DEBUG"):
            raise
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        return 1


def error_line(e: Exception) -> str:
    """The message of a user error; an OSError of the system as path, cause and fix (``nnseg.fs_errors``)."""
    if is_system_error(e):
        return describe_os_error(e)  # type: ignore[arg-type]
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    hint = "" if isinstance(e, (ValueError, OSError)) else " (set NNSEG_DEBUG=1 to see where it happened)"
    return f"{message}{hint}"


def _closest(word: str, commands: Sequence[str]) -> str:
    """`` (did you mean train?)`` for a typo such as ``trian``; also matches nnU-Net's script names
    (``nnUNetv2_train`` -> ``train``); empty when nothing is close."""
    from difflib import get_close_matches

    scripts = {c.script: c.name for c in COMMANDS if c.script}
    if word in scripts:
        return f" (did you mean {scripts[word]}? nnseg {scripts[word]} is {word})"
    match = get_close_matches(word, list(commands), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = by_name()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nnseg <command> [options]\n\ncommands:")
        for c in COMMANDS:
            alias = f"  (= {c.script})" if c.script else ""
            print(f"  {c.name:<26}{c.help}{alias}")
        return 0
    if argv[0] in ("-V", "--version"):
        from nnseg import __version__

        print(f"nnseg {__version__}")
        return 0
    if argv[0] not in commands:
        print(f"nnseg: unknown command {argv[0]!r}{_closest(argv[0], commands)}; commands: {', '.join(commands)}",
              file=sys.stderr)
        return 2
    return run_command(commands[argv[0]], argv[1:], prog=f"nnseg {argv[0]}", env=env, cwd=cwd)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
