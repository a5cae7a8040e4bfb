"""Every library nnseg's code imports is a core dependency, or belongs to an extra and is imported only in that
extra's modules: the core install (`pip install nnseg`, `./dev.sh demo`) must run everything but the extras. The test
suite installs every extra, so a missing core dependency would otherwise only show on a user's machine."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src" / "nnseg"
IMPORT_NAMES = {"pillow": "PIL"}  # distribution -> module, where they differ
# module -> the files (prefixes under src/nnseg) that may import it: the extra's own layer, or a guarded optional import
OPTIONAL = {
    "dask": ("cluster/",), "distributed": ("cluster/",), "bokeh": ("cluster/",),
    "fastapi": ("serve/",), "uvicorn": ("serve/",), "h11": ("serve/",),
    "pydicom": ("raw/dicom/",),
    "mlflow": ("training/loggers/",),
    "graphviz": ("training/summary_hook.py",), "torchview": ("training/summary_hook.py",),
}


def core_modules() -> set[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].strip() for d in deps}
    return {IMPORT_NAMES.get(n.lower(), n) for n in names}


def third_party_imports() -> dict[str, set[str]]:
    uses: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            else:
                continue
            for name in names:
                if name not in sys.stdlib_module_names and name != "nnseg":
                    uses.setdefault(name, set()).add(path.relative_to(SRC).as_posix())
    return uses


def test_every_import_is_a_core_dependency_or_stays_in_its_extra() -> None:
    core = core_modules()
    wrong = {f"{module} in {file}" for module, files in third_party_imports().items() if module not in core
             for file in files if not file.startswith(OPTIONAL.get(module, ("\0",)))}
    assert not wrong, (f"imported but neither a core dependency in pyproject.toml nor confined to its extra: "
                       f"{sorted(wrong)}; add it to [project] dependencies or move the import into the extra's layer")


def test_the_check_sees_the_imports() -> None:
    """Lazy imports inside functions count (psutil is one), and the core names map to their modules."""
    assert {"torch", "numpy", "psutil", "isal", "PIL"} <= set(third_party_imports())
    assert {"torch", "SimpleITK", "PIL", "psutil", "isal"} <= core_modules()
