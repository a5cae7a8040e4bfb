"""Where ``-pretrained_weights`` come from: a checkpoint file or a model zip (nnU-Net's or nnseg's export).

A zip is read in place: its first fold's ``checkpoint_final.pth`` (``fold_0`` before ``fold_1`` ..., then
``fold_all``; ``checkpoint_best.pth`` when no final one exists) is copied to a temporary file and loaded like any
checkpoint (no code is unpickled), and the model folder's ``dataset.json`` gives the pretrained channels and labels.
For a checkpoint file the pretrained ``dataset.json`` comes from the checkpoint's ``init_args`` (nnU-Net and nnseg
store it there), else from ``dataset.json`` two folders up (``<model>/fold_X/checkpoint.pth``).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from nnseg.jsonio import load_json
from nnseg.training.checkpoint import load_checkpoint, network_state_dict

MAX_MEMBER_BYTES = 16 * 2**30  # the model-zip install limit (nnseg.sharing.zip_limits)
MAX_MEMBER_RATIO = 200
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


@dataclass(frozen=True)
class PretrainedSource:
    """The pretrained network weights (wrapper prefixes removed), its ``dataset.json`` (None: unknown) and where
    both were read (``file.pth`` or ``model.zip:Dataset.../fold_0/checkpoint_final.pth``)."""

    weights: dict[str, torch.Tensor]
    dataset_json: dict[str, Any] | None
    where: str

    @property
    def channel_names(self) -> list[str] | None:
        names = (self.dataset_json or {}).get("channel_names") or (self.dataset_json or {}).get("modality")
        if not isinstance(names, dict):
            return None
        return [str(names[k]) for k in sorted(names, key=lambda k: int(k) if str(k).isdigit() else 0)]

    @property
    def labels(self) -> dict[str, Any] | None:
        labels = (self.dataset_json or {}).get("labels")
        return dict(labels) if isinstance(labels, dict) else None


def read_pretrained(path: Path) -> PretrainedSource:
    """Read ``-pretrained_weights PATH`` (a ``.pth`` checkpoint or a model ``.zip``).

    Raises:
        ValueError: not a readable checkpoint, a zip without a fold checkpoint, or a zip member beyond the limits;
            the message starts with ``-pretrained_weights PATH``.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"-pretrained_weights {path} does not exist; give a checkpoint (.pth) or a model zip")
    try:
        if zipfile.is_zipfile(path) and not _is_torch_zip(path):
            return _read_zip(path)
        ckpt = load_checkpoint(path)
    except (ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"-pretrained_weights {path}: {e}") from None
    spec = (ckpt.get("init_args") or {}).get("dataset_json") if isinstance(ckpt.get("init_args"), dict) else None
    beside = path.parent.parent / "dataset.json"
    if not isinstance(spec, dict) and beside.is_file():
        spec = load_json(beside)
    return PretrainedSource(network_state_dict(ckpt), spec if isinstance(spec, dict) else None, str(path))


def _is_torch_zip(path: Path) -> bool:
    """torch.save writes a zip too: one top folder holding ``data.pkl``."""
    with zipfile.ZipFile(path) as zf:
        return any(PurePosixPath(n).name == "data.pkl" and len(PurePosixPath(n).parts) == 2 for n in zf.namelist())


def _fold_order(member: str) -> tuple[int, int, str]:
    parts = PurePosixPath(member).parts
    fold = _FOLD_RE.match(parts[-2]).group(1) if len(parts) >= 2 and _FOLD_RE.match(parts[-2]) else "all"
    return (0 if parts[-1] == "checkpoint_final.pth" else 1, 10**6 if fold == "all" else int(fold), member)


def choose_zip_member(names: list[str]) -> str | None:
    """The checkpoint a model zip's fine-tuning starts from (see the module docstring), or None."""
    found = [n for n in names if PurePosixPath(n).name in ("checkpoint_final.pth", "checkpoint_best.pth")
             and len(PurePosixPath(n).parts) >= 2 and _FOLD_RE.match(PurePosixPath(n).parts[-2])]
    return min(found, key=_fold_order) if found else None


def _read_zip(path: Path) -> PretrainedSource:
    with zipfile.ZipFile(path) as zf:
        member = choose_zip_member(zf.namelist())
        if member is None:
            raise ValueError("the zip holds no <model>/fold_X/checkpoint_final.pth (or checkpoint_best.pth); give a "
                             "model zip written by nnUNetv2_export_model_to_zip, or the checkpoint file itself")
        info = zf.getinfo(member)
        if info.file_size > MAX_MEMBER_BYTES or info.file_size > MAX_MEMBER_RATIO * max(info.compress_size, 1):
            raise ValueError(f"zip member {member} unpacks to {info.file_size} bytes (limits: "
                             f"{MAX_MEMBER_BYTES} bytes, ratio {MAX_MEMBER_RATIO}:1); refusing to unpack it")
        spec_name = str(PurePosixPath(member).parent.parent / "dataset.json")
        spec = json.loads(zf.read(spec_name)) if spec_name in zf.namelist() else None
        with tempfile.TemporaryDirectory(prefix="nnseg_pretrained_") as tmp:
            local = Path(tmp) / "checkpoint.pth"
            with zf.open(member) as src, local.open("wb") as dst:
                shutil.copyfileobj(src, dst, 2**22)
            ckpt = load_checkpoint(local)
    if not isinstance(spec, dict):
        init = ckpt.get("init_args")
        spec = init.get("dataset_json") if isinstance(init, dict) else None
    return PretrainedSource(network_state_dict(ckpt), spec if isinstance(spec, dict) else None, f"{path}:{member}")
