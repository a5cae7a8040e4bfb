"""Limits on a model zip, checked from its central directory before anything is extracted.

A model zip (``nnUNetv2_export_model_to_zip``) holds a few JSON files and ``.pth`` checkpoints, which compress
poorly (about 1.1:1). A zip bomb does the opposite: a 2 MB zip that declares a 2 GiB file of zeros. nnseg refuses a
zip whose declared uncompressed total exceeds ``max_total_bytes``, whose compression ratio (total, or of one file
larger than 1 MiB) exceeds ``max_ratio``, or that would not fit on the disk; Python's ``zipfile`` never extracts
more than an entry declares, so the declared sizes bound what is written. Every file must also lie inside a
model folder ``DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/...`` (or the dataset's ``ensembles/`` folder and
inference instructions), the layout nnU-Net exports.

Defaults: 16 GiB in total and a ratio of 200; override with ``--max-unzipped-gb`` / ``--max-zip-ratio`` or the
environment variables ``NNSEG_MODEL_ZIP_MAX_GB`` and ``NNSEG_MODEL_ZIP_MAX_RATIO``.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

GIB = 1 << 30
DEFAULT_MAX_TOTAL_GB = 16.0
DEFAULT_MAX_RATIO = 200.0
RATIO_MIN_BYTES = 1 << 20  # files below this size may compress as well as they like (JSON of spaces, empty files)
ENV_MAX_GB = "NNSEG_MODEL_ZIP_MAX_GB"
ENV_MAX_RATIO = "NNSEG_MODEL_ZIP_MAX_RATIO"
_DATASET = re.compile(r"^Dataset\d{3}_.+$")
DATASET_FILES = ("inference_information.json", "inference_instructions.txt", "inference_information.txt")


@dataclass(frozen=True)
class ZipLimits:
    """The most a model zip may unpack to (``max_total_bytes``) and its largest compression ratio."""

    max_total_bytes: int = int(DEFAULT_MAX_TOTAL_GB * GIB)
    max_ratio: float = DEFAULT_MAX_RATIO

    @classmethod
    def from_settings(cls, *, max_gb: float | None = None, max_ratio: float | None = None,
                      env: Mapping[str, str] | None = None) -> "ZipLimits":
        """Options first, then ``NNSEG_MODEL_ZIP_MAX_GB`` / ``NNSEG_MODEL_ZIP_MAX_RATIO`` in ``env``, then defaults."""
        env = env or {}
        gb = max_gb if max_gb is not None else _env_number(env, ENV_MAX_GB, DEFAULT_MAX_TOTAL_GB)
        ratio = max_ratio if max_ratio is not None else _env_number(env, ENV_MAX_RATIO, DEFAULT_MAX_RATIO)
        if not gb > 0 or not ratio >= 1:
            raise ValueError(f"model zip limits must be positive (total {gb} GiB, ratio {ratio}); pass a size in GiB "
                             "> 0 and a ratio >= 1")
        return cls(int(gb * GIB), float(ratio))


def _env_number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number; set it to e.g. {default:g} or unset it") from None


def check_zip_limits(zf: zipfile.ZipFile, limits: ZipLimits, target: Path) -> None:
    """Refuse a zip that unpacks to too much, compresses suspiciously well, or does not fit on ``target``'s disk.

    Raises:
        ValueError: naming the zip, the sizes, the limit and how to raise it.
    """
    files = [i for i in zf.infolist() if not i.is_dir()]
    total = sum(i.file_size for i in files)
    packed = max(1, sum(i.compress_size for i in files))
    how = f"if you trust the file, raise the limit (--max-unzipped-gb / {ENV_MAX_GB}, --max-zip-ratio / {ENV_MAX_RATIO})"
    if total > limits.max_total_bytes:
        raise ValueError(f"refusing to install {zf.filename}: it unpacks to {total / GIB:.2f} GiB, more than the limit "
                         f"of {limits.max_total_bytes / GIB:.2f} GiB for a model zip; {how}")
    worst = max(files, key=lambda i: i.file_size / max(1, i.compress_size), default=None)
    ratios = [(total / packed, "in total")] if total > RATIO_MIN_BYTES else []
    if worst is not None and worst.file_size > RATIO_MIN_BYTES:
        ratios.append((worst.file_size / max(1, worst.compress_size), f"for {worst.filename!r}"))
    for ratio, what in ratios:
        if ratio > limits.max_ratio:
            raise ValueError(f"refusing to install {zf.filename}: it compresses {ratio:.0f}:1 {what} "
                             f"({total / GIB:.2f} GiB from {packed / 2**20:.1f} MiB), beyond the limit of "
                             f"{limits.max_ratio:g}:1 (model checkpoints compress about 1.1:1; this looks like a zip "
                             f"bomb); {how}")
    free = shutil.disk_usage(_existing(target)).free
    if total > free:
        raise ValueError(f"refusing to install {zf.filename}: it unpacks to {total / GIB:.2f} GiB but {target} has only "
                         f"{free / GIB:.2f} GiB free; free space or set nnUNet_results to a larger disk")


def check_model_layout(zf: zipfile.ZipFile) -> None:
    """Every entry lies where nnU-Net's export puts files: in a model folder
    ``DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/``, in ``DatasetXXX_Name/ensembles/<name>/``, or is one of
    the dataset's ``inference_information.json`` / ``inference_instructions.txt`` (folders above are allowed).

    Raises:
        ValueError: naming the entries outside any model folder.
    """
    outside = [info.filename for info in zf.infolist()
               if not _in_layout(PurePosixPath(info.filename.replace("\\", "/")).parts, info.is_dir())]
    if outside:
        shown = ", ".join(repr(n) for n in outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        raise ValueError(f"refusing to install {zf.filename}: {len(outside)} entries lie outside any model folder "
                         f"DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/ ({shown}); a model zip holds only "
                         "such folders (as nnUNetv2_export_model_to_zip writes them). Re-export the model")


def _in_layout(parts: tuple[str, ...], is_dir: bool) -> bool:
    if not parts or not _DATASET.match(parts[0]):
        return False
    if len(parts) == 1:
        return is_dir
    if parts[1].count("__") == 2 or parts[1] == "ensembles":
        return len(parts) >= 3 or is_dir
    return len(parts) == 2 and not is_dir and parts[1] in DATASET_FILES


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
