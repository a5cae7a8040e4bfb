"""Export trained models as a zip that ``nnUNetv2_install_pretrained_model_from_zip`` (or nnseg) installs.

The zip holds the same entries as nnU-Net's ``nnUNetv2_export_model_to_zip``, with paths relative to
``nnUNet_results``. Per configuration ``DatasetX/<Trainer>__<Plans>__<configuration>/``:

- ``plans.json``, ``dataset.json``, ``dataset_fingerprint.json``;
- per fold ``fold_k/``: ``debug.json`` (if present), each requested checkpoint, ``progress.png``,
  ``network_architecture.pdf`` (if present), ``validation/summary.json`` (with ``export_crossval_predictions``: every
  file in ``validation/`` except ``.npz``/``.pkl``);
- every ``crossval_results_folds_*/`` folder: ``summary.json``, ``postprocessing.pkl``, ``postprocessing.json``
  (with ``export_crossval_predictions``: all its files).

Per dataset: ``DatasetX/ensembles/<ensemble>/{summary.json, postprocessing.pkl, postprocessing.json}`` for the
ensembles whose members are all exported, and ``inference_information.json`` / ``inference_instructions.txt``
whenever they exist (nnU-Net skips both when the dataset has no ``ensembles/`` folder, and looks for a never-written
``inference_information.txt``; nnseg exports the real files).

``strip_optimizer=True`` writes each checkpoint with ``optimizer_state`` set to None (all other keys kept): about half
the size, still loadable by nnU-Net and nnseg for inference, but not for continuing training with ``--c``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path
from nnseg.predictions.inference.checkpoint import load_checkpoint
from nnseg.predictions.inference.defaults import EXPORT_CONFIGURATIONS

DEFAULT_CONFIGURATIONS: tuple[str, ...] = EXPORT_CONFIGURATIONS
DEFAULT_FOLDS: tuple[int | str, ...] = (0, 1, 2, 3, 4)
MODEL_FILES: tuple[str, ...] = ("plans.json", "dataset_fingerprint.json", "dataset.json")
REQUIRED_MODEL_FILES: tuple[str, ...] = ("plans.json", "dataset.json")
POSTPROCESSING_FILES: tuple[str, ...] = ("summary.json", "postprocessing.pkl", "postprocessing.json")
DATASET_FILES: tuple[str, ...] = ("inference_information.json", "inference_instructions.txt")
CROSSVAL_PREFIX = "crossval_results_folds_"


@dataclass(frozen=True)
class ExportEntry:
    """One file of the zip: ``source`` on disk, ``arcname`` in the zip, ``checkpoint`` if it is a ``.pth`` to strip."""

    source: Path
    arcname: str
    checkpoint: bool = False


@dataclass
class ExportResult:
    """What :func:`export_model_zip` wrote.

    Attributes:
        output_zip: the zip file.
        entries: file entries (zip paths, in write order; directory entries not listed).
        configurations: exported configurations.
        skipped: human-readable notes on what was requested but skipped (missing configurations, folds).
    """

    output_zip: Path
    entries: list[str] = field(default_factory=list)
    configurations: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def model_folder_name(trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's model folder name ``<Trainer>__<Plans>__<configuration>``."""
    return f"{trainer}__{plans}__{configuration}"


def fold_folder_name(fold: int | str) -> str:
    """``fold_3`` for 3 (or "3"), ``fold_all`` for "all".

    Raises:
        ValueError: ``fold`` is neither an integer nor "all".
    """
    text = str(fold).strip()
    if text == "all":
        return "fold_all"
    if not text.isdigit():
        raise ValueError(f"fold {fold!r} is not a fold number (0, 1, ...) or 'all'")
    return f"fold_{int(text)}"


def _rel(results_root: Path, path: Path) -> str:
    return path.relative_to(results_root).as_posix()


def _files(folder: Path, names: Sequence[str]) -> list[Path]:
    """``folder/name`` for each name that exists as a file (in the given order)."""
    return [folder / n for n in names if (folder / n).is_file()]


def _top_files(folder: Path, *, exclude_suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Plain files directly in ``folder`` (sorted), except those ending in ``exclude_suffixes``."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(exclude_suffixes))


def _fold_problem(fold_dir: Path, checkpoints: Sequence[str]) -> str | None:
    """Why this fold cannot be exported (missing folder / checkpoints), or None."""
    if not fold_dir.is_dir():
        present = sorted(p.name for p in fold_dir.parent.glob("fold_*") if p.is_dir())
        return f"{fold_dir} does not exist (folds present: {', '.join(present) or 'none'})"
    missing = [c for c in checkpoints if not (fold_dir / c).is_file()]
    if missing:
        present = sorted(p.name for p in fold_dir.glob("*.pth"))
        return f"{fold_dir} lacks {', '.join(missing)} (checkpoints present: {', '.join(present) or 'none'})"
    return None


def _fold_entries(fold_dir: Path, checkpoints: Sequence[str], *, crossval_predictions: bool) -> list[tuple[Path, bool]]:
    """``(file, is_checkpoint)`` of one fold in nnU-Net's order (checkpoints, validation, progress.png, debug.json)."""
    out = [(fold_dir / c, True) for c in checkpoints]
    validation = fold_dir / "validation"
    if crossval_predictions:
        out += [(p, False) for p in _top_files(validation, exclude_suffixes=(".npz", ".pkl"))]
    else:
        out += [(p, False) for p in _files(validation, ("summary.json",))]
    out += [(p, False) for p in _files(fold_dir, ("progress.png", "debug.json", "network_architecture.pdf"))]
    return out


def _crossval_entries(model_dir: Path, *, crossval_predictions: bool) -> list[Path]:
    out: list[Path] = []
    for folder in sorted(p for p in model_dir.glob(CROSSVAL_PREFIX + "*") if p.is_dir()):
        out += _top_files(folder) if crossval_predictions else _files(folder, POSTPROCESSING_FILES)
    return out


def _configuration_entries(model_dir: Path, *, folds: Sequence[int | str], checkpoints: Sequence[str],
                           crossval_predictions: bool, strict: bool, skipped: list[str]) -> list[tuple[Path, bool]]:
    """Files of one model folder; an empty list when ``strict`` is off and no requested fold is exportable."""
    missing = [n for n in REQUIRED_MODEL_FILES if not (model_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"model folder {model_dir} lacks {', '.join(missing)}; it is not a complete nnU-Net "
                                "model folder (copy the files from training or retrain)")
    fold_files: list[tuple[Path, bool]] = []
    for fold in folds:
        fold_dir = model_dir / fold_folder_name(fold)
        problem = _fold_problem(fold_dir, checkpoints)
        if problem is not None:
            if strict:
                raise FileNotFoundError(f"{problem}; train that fold, choose folds with -f and checkpoints with -chk, "
                                        "or pass --not_strict to skip missing folds")
            skipped.append(problem)
            continue
        fold_files += _fold_entries(fold_dir, checkpoints, crossval_predictions=crossval_predictions)
    if not fold_files:
        skipped.append(f"{model_dir}: none of the folds {list(folds)} can be exported")
        return []
    head = [(p, False) for p in _files(model_dir, MODEL_FILES)]
    tail = [(p, False) for p in _crossval_entries(model_dir, crossval_predictions=crossval_predictions)]
    return head + fold_files + tail


def parse_ensemble_name(name: str) -> list[str] | None:
    """Member model folders of an ``ensembles/`` folder name (``ensemble___<T__P__C>___<T__P__C>___<folds>``).

    Returns:
        The member folder names, or None when ``name`` is not an ensemble folder name.
    """
    parts = name.split("___")
    if len(parts) < 4 or parts[0] != "ensemble":
        return None
    members = parts[1:-1]
    if any(m.count("__") != 2 for m in members):
        return None
    return members


def _dataset_entries(dataset_dir: Path, exported: set[str]) -> list[Path]:
    """Ensembles made only of exported models, then inference_information.json / inference_instructions.txt."""
    out: list[Path] = []
    ensembles = dataset_dir / "ensembles"
    if ensembles.is_dir():
        for folder in sorted(p for p in ensembles.iterdir() if p.is_dir()):
            members = parse_ensemble_name(folder.name)
            if members is not None and set(members) <= exported:
                out += _files(folder, POSTPROCESSING_FILES)
    return out + _files(dataset_dir, DATASET_FILES)


def _check_names(configurations: Sequence[str], folds: Sequence[int | str], checkpoints: Sequence[str]) -> None:
    for what, values in (("configurations", configurations), ("folds", folds), ("checkpoints", checkpoints)):
        if not values:
            raise ValueError(f"no {what} given; name at least one")
    for fold in folds:
        fold_folder_name(fold)
    bad = [c for c in checkpoints if not c or "/" in c or "\\" in c or c in (".", "..")]
    if bad:
        raise ValueError(f"checkpoint names {bad} must be plain file names in the fold folder, e.g. checkpoint_final.pth")


def collect_export_entries(results_root: PathLike, dataset_name: str, *,
                           configurations: Sequence[str] = DEFAULT_CONFIGURATIONS, trainer: str = "nnUNetTrainer",
                           plans: str = "nnUNetPlans", folds: Sequence[int | str] = DEFAULT_FOLDS,
                           checkpoints: Sequence[str] = ("checkpoint_final.pth",),
                           export_crossval_predictions: bool = False,
                           strict: bool = True) -> tuple[list[ExportEntry], list[str], list[str]]:
    """The files :func:`export_model_zip` writes, without writing anything.

    Returns:
        ``(entries, exported_configurations, skipped_notes)``.

    Raises:
        FileNotFoundError: the dataset has no results folder, no requested configuration exists, or (``strict``)
            a requested fold or checkpoint is missing (the message lists what exists).
    """
    results_root = Path(results_root)
    _check_names(configurations, folds, checkpoints)
    folds = list({fold_folder_name(f): f for f in folds}.values())  # 0, "0" and 0 again name one folder
    checkpoints = list(dict.fromkeys(checkpoints))
    dataset_dir = results_root / dataset_name
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"no trained models for {dataset_name}: {dataset_dir} does not exist; check nnUNet_results and -d")
    entries: list[ExportEntry] = []
    exported: list[str] = []
    skipped: list[str] = []
    for configuration in dict.fromkeys(configurations):
        model_dir = dataset_dir / model_folder_name(trainer, plans, configuration)
        if not model_dir.is_dir():
            skipped.append(f"configuration {configuration}: {model_dir} does not exist")
            continue
        files = _configuration_entries(model_dir, folds=folds, checkpoints=checkpoints, strict=strict,
                                       crossval_predictions=export_crossval_predictions, skipped=skipped)
        if files:
            exported.append(configuration)
            entries += [ExportEntry(p, _rel(results_root, p), ckpt) for p, ckpt in files]
    if not exported:
        present = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir() and p.name.count("__") == 2)
        raise FileNotFoundError(
            f"nothing to export for {dataset_name} (trainer {trainer}, plans {plans}, configurations "
            f"{list(configurations)}): {'; '.join(skipped)}. Model folders present: {', '.join(present) or 'none'}; "
            "pass -tr, -p and -c matching one of them")
    names = {model_folder_name(trainer, plans, c) for c in exported}
    entries += [ExportEntry(p, _rel(results_root, p)) for p in _dataset_entries(dataset_dir, names)]
    return entries, exported, skipped


def stripped_checkpoint_bytes(path: PathLike) -> bytes:
    """The checkpoint at ``path`` serialised again with ``optimizer_state`` set to None (other keys unchanged)."""
    ckpt = load_checkpoint(path)
    ckpt["optimizer_state"] = None
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def _add_parent_dirs(zf: zipfile.ZipFile, arcname: str, seen: set[str]) -> None:
    """Directory entries for every parent of ``arcname`` not written yet (as nnU-Net's zip has them)."""
    parts = arcname.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        name = "/".join(parts[:i]) + "/"
        if name not in seen:
            seen.add(name)
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")


def write_export_zip(entries: Sequence[ExportEntry], output_zip: PathLike, *, strip_optimizer: bool = False) -> None:
    """Write ``entries`` into ``output_zip`` atomically (deflate-compressed, with directory entries)."""
    with atomic_path(output_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            seen: set[str] = set()
            for entry in entries:
                _add_parent_dirs(zf, entry.arcname, seen)
                if entry.checkpoint and strip_optimizer:
                    zf.writestr(entry.arcname, stripped_checkpoint_bytes(entry.source))
                else:
                    zf.write(entry.source, entry.arcname)


def export_model_zip(results_root: PathLike, dataset_name: str, output_zip: PathLike, *,
                     configurations: Sequence[str] = DEFAULT_CONFIGURATIONS, trainer: str = "nnUNetTrainer",
                     plans: str = "nnUNetPlans", folds: Sequence[int | str] = DEFAULT_FOLDS,
                     checkpoints: Sequence[str] = ("checkpoint_final.pth",), export_crossval_predictions: bool = False,
                     strip_optimizer: bool = False, strict: bool = True) -> ExportResult:
    """Write the trained models of ``dataset_name`` to a zip (nnU-Net's ``export_pretrained_model``).

    Args:
        results_root: ``nnUNet_results``.
        dataset_name: ``DatasetXXX_Name``.
        output_zip: the zip to write (atomically; parent folders are created).
        configurations: configurations to export; those without a model folder are skipped (at least one must exist).
        trainer, plans: model folder ``<trainer>__<plans>__<configuration>``.
        folds: fold numbers or "all".
        checkpoints: checkpoint file names per fold.
        export_crossval_predictions: also export validation and cross-validation predictions (not .npz/.pkl).
        strip_optimizer: write checkpoints with ``optimizer_state = None`` (smaller; inference only).
        strict: a missing fold or checkpoint is an error; False skips such folds (noted in ``skipped``).

    Returns:
        An :class:`ExportResult`.

    Raises:
        FileNotFoundError: nothing to export, or (``strict``) a requested fold/checkpoint is missing.
        ValueError: bad fold/checkpoint names, or ``output_zip`` is a folder.
    """
    output_zip = Path(output_zip)
    if output_zip.is_dir():
        raise ValueError(f"output {output_zip} is a folder; pass a file name such as {output_zip / 'model.zip'}")
    entries, exported, skipped = collect_export_entries(
        results_root, dataset_name, configurations=configurations, trainer=trainer, plans=plans, folds=folds,
        checkpoints=checkpoints, export_crossval_predictions=export_crossval_predictions, strict=strict)
    write_export_zip(entries, output_zip, strip_optimizer=strip_optimizer)
    return ExportResult(output_zip=output_zip, entries=[e.arcname for e in entries], configurations=exported,
                        skipped=skipped)
