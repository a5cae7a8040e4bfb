"""Where raw, preprocessed and results data live, and how a dataset reference is resolved.

Resolution order for each of the three folders (the CLI passes ``os.environ``; library code never reads it):

1. the nnU-Net environment variable (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``);
2. a config file ``nnseg.toml`` in the working folder, then in the user config folder
   (``$XDG_CONFIG_HOME/nnseg/nnseg.toml``, ``~/.config/nnseg/nnseg.toml``, ``%APPDATA%/nnseg/nnseg.toml``)::

       [paths]
       raw = "/data/nnUNet_raw"
       preprocessed = "/data/nnUNet_preprocessed"
       results = "/data/nnUNet_results"
       # or just: root = "/data/nnseg"   (raw/, preprocessed/, results/ below it)

3. the default root ``./nnseg_data/{raw,preprocessed,results}``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_NAMES = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
CONFIG_NAME = "nnseg.toml"
DEFAULT_ROOT = "nnseg_data"
_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


@dataclass(frozen=True)
class DataRoots:
    """The three nnU-Net folders and, for each, where its value came from (for ``nnseg paths``)."""

    raw: Path
    preprocessed: Path
    results: Path
    sources: Mapping[str, str]

    def describe(self) -> str:
        rows = [f"{key:<13} {getattr(self, key)}  ({self.sources[key]})" for key in ENV_NAMES]
        return "\n".join(rows)


def user_config_dirs(env: Mapping[str, str]) -> list[Path]:
    """Candidate user config folders, most specific first."""
    dirs = []
    if env.get("XDG_CONFIG_HOME"):
        dirs.append(Path(env["XDG_CONFIG_HOME"]) / "nnseg")
    if env.get("APPDATA"):
        dirs.append(Path(env["APPDATA"]) / "nnseg")
    home = env.get("HOME") or env.get("USERPROFILE")
    if home:
        dirs.append(Path(home) / ".config" / "nnseg")
    return dirs


def _read_config(path: Path) -> dict[str, Path]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e}); fix it or delete it") from None
    section = data.get("paths", {})
    if not isinstance(section, dict):
        raise ValueError(f"{path}: [paths] must be a table, got {section!r}")
    base = path.parent
    out: dict[str, Path] = {}
    if "root" in section:
        root = base / Path(str(section["root"])).expanduser()
        out = {key: root / key for key in ENV_NAMES}
    for key in ENV_NAMES:
        if key in section:
            out[key] = base / Path(str(section[key])).expanduser()
    unknown = set(section) - set(ENV_NAMES) - {"root"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} in [paths]; allowed: root, raw, preprocessed, results")
    return out


def find_config_file(cwd: Path, env: Mapping[str, str]) -> Path | None:
    for folder in [cwd, *user_config_dirs(env)]:
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def resolve_roots(env: Mapping[str, str], *, cwd: Path) -> DataRoots:
    """Resolve the three folders from ``env`` (a mapping like ``os.environ``), config files and defaults."""
    config_file = find_config_file(cwd, env)
    from_config = _read_config(config_file) if config_file else {}
    values: dict[str, Path] = {}
    sources: dict[str, str] = {}
    for key, env_name in ENV_NAMES.items():
        if env.get(env_name):
            values[key], sources[key] = Path(env[env_name]).expanduser(), f"environment variable {env_name}"
        elif key in from_config:
            values[key], sources[key] = from_config[key], f"config file {config_file}"
        else:
            values[key], sources[key] = cwd / DEFAULT_ROOT / key, f"default ./{DEFAULT_ROOT}/{key} (set {env_name} or write {CONFIG_NAME} to change)"
    return DataRoots(raw=values["raw"], preprocessed=values["preprocessed"], results=values["results"], sources=sources)


def _datasets_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _DATASET_RE.match(p.name))


def list_datasets(roots: DataRoots) -> list[str]:
    """All ``DatasetXXX_Name`` folders found in any of the three roots."""
    found = set()
    for folder in (roots.raw, roots.preprocessed, roots.results):
        found.update(_datasets_in(folder))
    return sorted(found)


def dataset_id_of(name: str) -> int:
    m = _DATASET_RE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a dataset name; expected DatasetXXX_Name, e.g. Dataset004_Hippocampus")
    return int(m.group(1))


def find_dataset_name(ref: str | int, roots: DataRoots) -> str:
    """Resolve ``4``, ``'004'`` or ``'Dataset004_Hippocampus'`` to the dataset's folder name.

    Raises:
        ValueError: the reference matches no dataset (the message lists the datasets found) or several.
    """
    text = str(ref).strip()
    if text.startswith("Dataset"):
        return text if _DATASET_RE.match(text) else _bad_ref(text, roots)
    if not text.isdigit():
        return _bad_ref(text, roots)
    wanted = int(text)
    matches = sorted({n for n in list_datasets(roots) if dataset_id_of(n) == wanted})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"dataset id {wanted} is used by several folders: {matches}; remove or rename all but one")
    return _bad_ref(text, roots)


def _bad_ref(text: str, roots: DataRoots) -> str:
    known = list_datasets(roots)
    listing = ", ".join(known) if known else "none"
    raise ValueError(
        f"no dataset {text!r} in {roots.raw}, {roots.preprocessed} or {roots.results}; "
        f"datasets found: {listing}. Pass an id (4), a zero-padded id (004) or a full name (Dataset004_Hippocampus)"
    )
