"""Size budgets of the style guide: functions <= 40 code lines (docstrings excluded), modules <= 400 lines.

Also checks the stage import rule (a stage package imports only from stages before it) and that no import circle
exists between modules: every ``import nnseg...``/``from nnseg... import``/relative import at any depth (inside
functions too) is an edge of a module graph, and any cycle in it is a problem.
Run: python tools/check_style.py  (exit code 1 and a list of offenders when a budget is broken)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nnseg"
MAX_FUNCTION_LINES = 40
MAX_MODULE_LINES = 400
STAGES = ["raw", "fingerprint", "plans", "preprocessed", "training", "predictions", "sharing", "interactive", "metrics",
          "launch", "cluster", "serve"]
SHARED = {"_types", "_facade", "registry", "jsonio", "paths", "networks", "devices", "safe_pickle", "parallel", "locks",
          "fs_errors", "extensions"}
#: packages whose sub-packages are layered too: each imports only from itself and the ones before it
#: (``cli``: nnU-Net's workflow commands, then the services built on them; main/table/context sit above both)
LAYERS = {"predictions": ["inference", "export", "run", "dicom", "request"], "cli": ["workflow", "services"]}


def code_lines(node: ast.AST, source_lines: list[str]) -> int:
    """Lines of the body (signature and docstring left out), blank and comment lines not counted."""
    body = list(getattr(node, "body", []))
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    lines = source_lines[body[0].lineno - 1: node.end_lineno]
    blank_or_comment = sum(1 for ln in lines if not ln.strip() or ln.strip().startswith("#"))
    return len(lines) - blank_or_comment


def imported_modules(tree: ast.AST) -> set[str]:
    """The ``nnseg.*`` modules a file imports by absolute name, at any depth."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnseg."):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nnseg."))
    return out


def imported_stages(tree: ast.AST) -> set[str]:
    return {n.split(".")[1] for n in imported_modules(tree)}


def layer_problems(rel_parts: tuple[str, ...], tree: ast.AST) -> list[str]:
    """A sub-package of a :data:`LAYERS` package importing a later sibling (``predictions/run`` -> ``dicom``)."""
    order = LAYERS.get(rel_parts[0], [])
    if len(rel_parts) < 2 or rel_parts[1] not in order:
        return []
    here = order.index(rel_parts[1])
    later = {t[2] for t in (m.split(".") for m in imported_modules(tree))
             if len(t) > 2 and t[1] == rel_parts[0] and t[2] in order and order.index(t[2]) > here}
    if not later:
        return []
    return [f"{'/'.join(rel_parts)}.py: {rel_parts[0]}/{rel_parts[1]} imports later sub-package(s) {sorted(later)} "
            f"(order: {' -> '.join(order)})"]


def check(path: Path, root: Path = SRC) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rel = path.relative_to(root.parent)
    problems = []
    if len(lines) > MAX_MODULE_LINES:
        problems.append(f"{rel}: module has {len(lines)} lines (max {MAX_MODULE_LINES})")
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = code_lines(node, lines)
            if n > MAX_FUNCTION_LINES:
                problems.append(f"{rel}:{node.lineno}: function {node.name} has {n} code lines (max {MAX_FUNCTION_LINES})")
    stage = path.relative_to(root).parts[0]
    if stage in STAGES:
        allowed = set(STAGES[: STAGES.index(stage) + 1]) | SHARED
        bad = imported_stages(tree) - allowed
        if bad:
            problems.append(f"{rel}: stage {stage!r} imports later stage(s) {sorted(bad)}")
    problems += layer_problems(path.relative_to(root).with_suffix("").parts, tree)
    return problems


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` in the package rooted at ``root`` (``pkg/a/__init__.py`` -> ``pkg.a``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(target: str, modules: set[str]) -> str | None:
    """The module a dotted import target names: itself, or the closest enclosing module."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _import_targets(node: ast.AST, name: str, is_package: bool) -> list[str]:
    """Dotted names one import statement of module ``name`` may load (submodules of ``from x import y`` included)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Edges module -> modules it imports, within the package at ``root``, at any depth of the source."""
    files = {module_name(f, root): f for f in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _import_targets(node, name, path.name == "__init__.py"):
                hit = _resolve(target, modules) if target.split(".")[0] == root.name else None
                if hit and hit != name:
                    edges.add(hit)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def cycle_problems(root: Path) -> list[str]:
    graph = import_graph(root)
    return [f"import circle between {' , '.join(c)}: " + "; ".join(
        f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c) for c in import_cycles(graph)]


def main(root: Path = SRC) -> int:
    problems = [p for f in sorted(root.rglob("*.py")) for p in check(f, root)]
    problems += cycle_problems(root)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
