"""Size budgets of the style guide: functions <= 40 code lines (docstrings excluded), modules <= 400 lines.

Also checks the stage import rule: a stage package imports only from stages before it.
Run: python tools/check_style.py  (exit code 1 and a list of offenders when a budget is broken)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nnseg"
MAX_FUNCTION_LINES = 40
MAX_MODULE_LINES = 400
STAGES = ["raw", "fingerprint", "plans", "preprocessed", "training", "predictions", "interactive", "metrics", "launch",
          "cluster",
          "serve"]
SHARED = {"_types", "registry", "jsonio", "paths", "networks", "devices", "safe_pickle", "parallel", "locks", "fs_errors",
          "extensions"}


def code_lines(node: ast.AST, source_lines: list[str]) -> int:
    """Lines of the body (signature and docstring left out), blank and comment lines not counted."""
    body = list(getattr(node, "body", []))
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    lines = source_lines[body[0].lineno - 1: node.end_lineno]
    blank_or_comment = sum(1 for ln in lines if not ln.strip() or ln.strip().startswith("#"))
    return len(lines) - blank_or_comment


def imported_stages(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnseg."):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("nnseg.")]
        out.update(n.split(".")[1] for n in names)
    return out


def check(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rel = path.relative_to(SRC.parent)
    problems = []
    if len(lines) > MAX_MODULE_LINES:
        problems.append(f"{rel}: module has {len(lines)} lines (max {MAX_MODULE_LINES})")
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = code_lines(node, lines)
            if n > MAX_FUNCTION_LINES:
                problems.append(f"{rel}:{node.lineno}: function {node.name} has {n} code lines (max {MAX_FUNCTION_LINES})")
    stage = path.relative_to(SRC).parts[0]
    if stage in STAGES:
        allowed = set(STAGES[: STAGES.index(stage) + 1]) | SHARED
        bad = imported_stages(tree) - allowed
        if bad:
            problems.append(f"{rel}: stage {stage!r} imports later stage(s) {sorted(bad)}")
    return problems


def main() -> int:
    problems = [p for f in sorted(SRC.rglob("*.py")) for p in check(f)]
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
