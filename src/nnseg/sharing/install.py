"""Install a model zip written by ``nnUNetv2_export_model_to_zip`` (or :mod:`nnseg.sharing.export_model`).

Zip paths are relative to ``nnUNet_results`` (``DatasetX/<Trainer>__<Plans>__<config>/...``). Unlike a plain
``extractall``, every entry is checked first: absolute paths, ``..`` components and symbolic links are refused (each
named in the error) so that a zip can never write outside the results folder, and so are files outside a model
folder and zips beyond the size / compression-ratio limits of :mod:`nnseg.sharing.zip_limits`. Files are extracted into a temporary
folder inside ``results_root`` and then moved into place (same-named files of an installed model are replaced, as
nnU-Net does).
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from nnseg._types import PathLike
from nnseg.fs_errors import with_path
from nnseg.jsonio import replace_path
from nnseg.sharing.zip_limits import ZipLimits, check_model_layout, check_zip_limits


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry is unsafe, or None."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "contains '..'"
    return None


def check_zip_entries(zf: zipfile.ZipFile) -> None:
    """Raise ValueError naming every entry that would land outside the target folder."""
    problems = [f"{info.filename!r} {why}" for info in zf.infolist() if (why := _entry_problem(info))]
    if problems:
        raise ValueError(f"refusing to install {zf.filename}: {len(problems)} unsafe entries ({'; '.join(problems)}); "
                         "only relative paths inside nnUNet_results are allowed. Re-export the model")


def model_folders_in(names: list[str]) -> list[str]:
    """``DatasetX/<Trainer>__<Plans>__<config>`` folders named by zip entries (sorted, unique)."""
    found = set()
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if len(parts) >= 2 and parts[0].startswith("Dataset") and parts[1].count("__") == 2:
            found.add(f"{parts[0]}/{parts[1]}")
    return sorted(found)


def _move_tree(src: Path, dst: Path) -> None:
    """Move every file below ``src`` to the same relative place below ``dst`` (replacing existing files)."""
    for root, _dirs, files in os.walk(src):
        target_dir = dst / Path(root).relative_to(src)
        target_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            replace_path(Path(root) / f, target_dir / f)


def install_model_zip(zip_path: PathLike, results_root: PathLike, *, limits: ZipLimits | None = None) -> list[Path]:
    """Extract a model zip into ``results_root`` (nnU-Net's ``nnUNet_results``).

    Args:
        zip_path: the zip file.
        results_root: the results folder (created if missing).
        limits: the most the zip may unpack to and its largest compression ratio (default :class:`ZipLimits`).

    Returns:
        The installed model folders ``results_root/DatasetX/<Trainer>__<Plans>__<config>``.

    Raises:
        FileNotFoundError: ``zip_path`` does not exist.
        ValueError: not a zip file; some entries are absolute, contain ``..``, are symlinks or lie outside any model
            folder (all named); or the zip exceeds ``limits`` or the free disk space. Nothing is written then.
        OSError: extracting failed (disk full, ...): names the results folder; nothing extracted is kept.
    """
    zip_path, results_root = Path(zip_path), Path(results_root)
    if not zip_path.is_file():
        raise FileNotFoundError(f"model zip {zip_path} does not exist")
    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path} is not a zip file; pass the file written by nnUNetv2_export_model_to_zip")
    with zipfile.ZipFile(zip_path) as zf:
        check_zip_entries(zf)
        check_model_layout(zf)
        check_zip_limits(zf, limits or ZipLimits(), results_root)
        names = zf.namelist()
        results_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".install_", dir=results_root) as tmp:
            try:
                for info in zf.infolist():
                    zf.extract(info, tmp)
            except OSError as e:
                raise with_path(e, results_root) from None
            _move_tree(Path(tmp), results_root)
    return [results_root / m for m in model_folders_in(names)]
