"""Find the cases of a raw dataset: nnU-Net's ``CASE_XXXX<ending>`` file convention or the ``dataset`` key.

Images are ``imagesTr/CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... (4-digit channel index); labels are
``labelsTr/CASE.nii.gz``. The identifier is the file name minus ``len(file_ending) + 5`` characters. Hidden files
(name starting with ``.``, e.g. macOS ``._x.nii.gz``) are skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nnseg.raw.dataset_json import DatasetSpec


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: channel images in channel order, and the label map (None for prediction input)."""

    identifier: str
    images: tuple[Path, ...]
    label: Path | None


def channel_file_pattern(file_ending: str) -> re.Pattern[str]:
    """``^(identifier)_(XXXX)<ending>$``."""
    return re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")


def scan_channel_files(folder: Path, file_ending: str) -> tuple[dict[str, list[Path]], list[Path]]:
    """Group ``folder``'s files by case identifier.

    Returns:
        ``({identifier: [channel files sorted by name]}, [files with the ending but no _XXXX channel suffix])``,
        identifiers sorted.
    """
    pattern = channel_file_pattern(file_ending)
    cases: dict[str, list[Path]] = {}
    misnamed: list[Path] = []
    if not folder.is_dir():
        return {}, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(file_ending) or path.is_dir():
            continue
        m = pattern.match(path.name)
        if m is None:
            misnamed.append(path)
        else:
            cases.setdefault(m.group(1), []).append(path)
    return dict(sorted(cases.items())), misnamed


def endings_found(folder: Path) -> list[str]:
    """The distinct file endings (all suffixes, e.g. ``.nii.gz``) of the visible files in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted({"".join(p.suffixes) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")})


def expand_vars(text: str, env: Mapping[str, str] | None = None) -> str:
    """Expand ``$VAR`` / ``${VAR}`` like nnU-Net does for the ``dataset`` key (unknown variables stay as they are).

    ``env`` defaults to the process environment: nnU-Net defines these paths as environment-expanded.
    """
    if env is None:
        return os.path.expandvars(text)

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return env.get(name, m.group(0))

    return re.sub(r"\$(?:\{([^}]+)\}|(\w+))", repl, text)


def _resolve(raw_folder: Path, entry: str, env: Mapping[str, str] | None) -> Path:
    path = Path(expand_vars(str(entry), env)).expanduser()
    return path if path.is_absolute() else raw_folder / path


def _explicit_cases(raw_folder: Path, dataset: Mapping[str, object], env: Mapping[str, str] | None) -> list[CaseFiles]:
    out = []
    for identifier in sorted(dataset):
        entry = dataset[identifier]
        if not isinstance(entry, Mapping) or not isinstance(entry.get("images"), list):
            raise ValueError(f"{raw_folder / 'dataset.json'}: dataset[{identifier!r}] is {entry!r}; each case needs "
                             "{\"images\": [channel files...], \"label\": label file}")
        label = entry.get("label")
        out.append(CaseFiles(
            identifier=str(identifier),
            images=tuple(_resolve(raw_folder, p, env) for p in entry["images"]),
            label=_resolve(raw_folder, str(label), env) if label is not None else None,
        ))
    return out


def training_cases(raw_dataset_folder: Path, spec: DatasetSpec, *,
                   env: Mapping[str, str] | None = None) -> list[CaseFiles]:
    """The training cases, sorted by identifier.

    Uses ``spec.dataset`` when present (paths relative to ``raw_dataset_folder``, ``$VARS`` expanded from ``env``),
    else the cases found in ``imagesTr`` with labels ``labelsTr/<identifier><ending>`` (which may not exist:
    :func:`nnseg.raw.verify.verify_dataset` reports that).
    """
    raw_dataset_folder = Path(raw_dataset_folder)
    if spec.dataset is not None:
        return _explicit_cases(raw_dataset_folder, spec.dataset, env)
    grouped, _ = scan_channel_files(raw_dataset_folder / "imagesTr", spec.file_ending)
    labels = raw_dataset_folder / "labelsTr"
    return [CaseFiles(identifier=i, images=tuple(files), label=labels / f"{i}{spec.file_ending}")
            for i, files in grouped.items()]


def image_cases(folder: Path, file_ending: str, num_channels: int) -> list[CaseFiles]:
    """Prediction input: every case in ``folder`` with exactly ``num_channels`` channel files (or, for 3 or 4
    channels, one ``_0000`` file holding them all: an RGB(A) PNG), sorted.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no case found, a file lacks the ``_XXXX`` channel suffix, or a case misses / has extra channels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    grouped, misnamed = scan_channel_files(folder, file_ending)
    if misnamed:
        names = ", ".join(p.name for p in misnamed[:5])
        raise ValueError(f"{folder}: files {names} have no channel suffix; name them CASE_0000{file_ending} "
                         f"(CASE_0001{file_ending}, ... for further channels)")
    if not grouped:
        found = endings_found(folder)
        hint = f" (it holds files ending in {found})" if found else " (it is empty)"
        raise ValueError(f"{folder} holds no CASE_XXXX{file_ending} files{hint}; check the folder and the file ending")
    expected = [f"_{c:04d}{file_ending}" for c in range(num_channels)]
    out = []
    for identifier, files in grouped.items():
        wanted = [folder / f"{identifier}{e}" for e in expected]
        if num_channels in (3, 4) and files == wanted[:1]:
            wanted = wanted[:1]  # one RGB(A) file may hold every channel, as nnU-Net accepts; the reader decides
        missing = [p.name for p in wanted if p not in files]
        extra = [p.name for p in files if p not in wanted]
        if missing or extra:
            raise ValueError(f"case {identifier!r} in {folder}: the model expects {num_channels} channel file(s) "
                             f"{[identifier + e for e in expected]}; missing {missing}, unexpected {extra}")
        out.append(CaseFiles(identifier=identifier, images=tuple(wanted), label=None))
    return out
