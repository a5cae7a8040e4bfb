"""Extensions: the user's own components (losses, networks, trainer presets, ...) added to nnseg's registries.

nnU-Net varies training by subclassing its trainer and finds the subclass by name in its own package or in the folders
of ``nnUNet_extTrainer``. nnseg instead imports the user's module, whose code registers named components, e.g.
``LOSSES.add("dice_focal", make_dice_focal)`` or ``TRAINER_PRESETS.add("MyPreset", TrainConfig(...))``. Two sources:

* installed packages that declare an entry point in the group ``nnseg.extensions`` (``[project.entry-points.
  "nnseg.extensions"] my_ext = "my_package.nnseg_components"``); a module is imported, a callable is also called;
* folders named explicitly in ``NNSEG_EXTENSIONS`` or ``nnUNet_extTrainer`` (``os.pathsep``-separated): each folder is
  put on ``sys.path`` and its ``*.py`` modules and packages are imported. **This runs the code in those files** with
  your permissions; name only folders you trust.

Loading happens once per process: the commands load eagerly (so a broken extension fails before anything is written),
and a registry that misses a name loads lazily from ``os.environ``, which covers spawned workers and DDP ranks.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_POINT_GROUP = "nnseg.extensions"
FOLDER_VARIABLES = ("NNSEG_EXTENSIONS", "nnUNet_extTrainer")
DOCS = "docs/EXTENSIONS.md"


@dataclass
class _Loaded:
    entry_points: bool = False
    folders: set[str] = field(default_factory=set)
    modules: list[str] = field(default_factory=list)
    busy: bool = False
    seen: tuple[str, ...] | None = None  # the folder variables' values at the last load (unchanged: nothing to do)


_LOADED = _Loaded()


class ExtensionError(RuntimeError):
    """An extension module failed to import (the message names the file or entry point and the cause)."""


def extension_folders(env: Mapping[str, str]) -> list[Path]:
    """The folders named in ``NNSEG_EXTENSIONS`` and ``nnUNet_extTrainer``, in that order (empty entries skipped).

    Raises:
        NotADirectoryError: a named folder does not exist.
    """
    folders: list[Path] = []
    for variable in FOLDER_VARIABLES:
        for part in (env.get(variable) or "").split(os.pathsep):
            if not part.strip():
                continue
            folder = Path(part.strip()).expanduser().resolve()
            if not folder.is_dir():
                raise NotADirectoryError(f"{variable} names {part!r}, which is not a folder; fix or unset {variable} "
                                         f"(it lists folders of extension modules, see {DOCS})")
            if folder not in folders:
                folders.append(folder)
    return folders


def load_extensions(env: Mapping[str, str] | None = None) -> list[str]:
    """Import every extension not imported yet in this process; returns the module names imported by this call.

    Args:
        env: the environment to read the folder variables from (default ``os.environ``).

    Raises:
        ExtensionError: an extension module failed to import (the message names the file or entry point and the cause).
        NotADirectoryError: a folder named in the variables does not exist.
    """
    if _LOADED.busy:  # an extension looked a name up while being imported: no recursion
        return []
    env = os.environ if env is None else env
    seen = tuple(env.get(v) or "" for v in FOLDER_VARIABLES)
    if _LOADED.entry_points and seen == _LOADED.seen:
        return []
    _LOADED.busy = True
    try:
        new = [] if _LOADED.entry_points else _load_entry_points()
        _LOADED.entry_points = True
        nnseg_folders = {str(f) for f in extension_folders({"NNSEG_EXTENSIONS": env.get("NNSEG_EXTENSIONS") or ""})}
        for folder in extension_folders(env):
            if str(folder) not in _LOADED.folders:
                new += _load_folder(folder, nnunet_trainers_allowed=str(folder) not in nnseg_folders)
                _LOADED.folders.add(str(folder))
        _LOADED.seen = seen
    finally:
        _LOADED.busy = False
    _LOADED.modules += new
    return new


def loaded_modules() -> list[str]:
    """Names of the extension modules imported in this process so far."""
    return list(_LOADED.modules)


def _load_entry_points() -> list[str]:
    from importlib.metadata import entry_points

    names = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:  # noqa: BLE001 - re-raised with the entry point named
            raise ExtensionError(f"nnseg extension entry point {ep.name!r} ({ep.value}, group {ENTRY_POINT_GROUP!r}) "
                              f"failed: {type(e).__name__}: {e}. Fix or uninstall the package that declares it") from e
        names.append(ep.value)
    return names


def _module_files(folder: Path) -> list[tuple[str, Path]]:
    """``(module name, file)`` of the folder's top-level ``*.py`` files and packages (names starting with ``_`` or
    ``.`` are skipped), sorted by name."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.is_file() and path.suffix == ".py":
            found.append((path.stem, path))
        elif path.is_dir() and (path / "__init__.py").is_file():
            found.append((path.name, path / "__init__.py"))
    return found


def _is_nnunet_trainer_file(e: Exception) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "nnunetv2"


def _load_folder(folder: Path, *, nnunet_trainers_allowed: bool = False) -> list[str]:
    """Import the folder's modules. ``nnunet_trainers_allowed`` (a folder of ``nnUNet_extTrainer`` only, which users
    may keep set for nnU-Net itself): a file that needs nnU-Net (not installed) is skipped with a note, not refused."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))  # spawned processes inherit sys.path, so pickled classes resolve there too
    names = []
    for name, path in _module_files(folder):
        existing = sys.modules.get(name)
        if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path.resolve():
            raise ExtensionError(f"extension file {path} has the name of the already imported module {name!r} "
                              f"({getattr(existing, '__file__', 'built in')}); rename the file")
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            if nnunet_trainers_allowed and _is_nnunet_trainer_file(e):
                print(f"note: skipping {path} (from nnUNet_extTrainer): an nnU-Net trainer class, which needs nnunetv2; "
                      f"nnseg extensions register components instead of subclassing the trainer (see {DOCS})",
                      file=sys.stderr)
                continue
            hint = (" It looks like an nnU-Net trainer class; nnseg extensions register components instead of "
                    f"subclassing the trainer (see {DOCS})") if "nnunetv2" in str(e) else ""
            raise ExtensionError(f"extension file {path} (from {' / '.join(FOLDER_VARIABLES)}) failed to import: "
                              f"{type(e).__name__}: {e}.{hint}") from e
        names.append(name)
    return names
