"""What the page shows about a served model beyond ``GET /v1/models``: label colours, the DICOM options, the report.

Label colours come from ``dataset.json`` when it has the optional ``"label_colors"`` entry (label name -> ``"#rrggbb"``
or ``[r, g, b]``; nnU-Net ignores unknown keys), else from ITK-SNAP's default label colours (1 red, 2 green, 3 blue,
...), which segmentation users know. The training report is :mod:`nnseg.metrics.report`'s page for the model folder
(progress curves, per-case Dice table and box plot, worst cases; overlays when ``$nnUNet_raw/<dataset>`` exists),
rendered once per model and kept.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnseg.jsonio import load_json
from nnseg.predictions.dicom.dicom_predict import check_model_for_dicom
from nnseg.serve.automatic.models import ServedModel, label_names

#: ITK-SNAP's default colours of labels 1..20 (then repeated).
PALETTE = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 239, 213),
           (0, 0, 205), (205, 133, 63), (210, 180, 140), (102, 205, 170), (0, 0, 128), (0, 139, 139), (46, 139, 87),
           (255, 228, 225), (106, 90, 205), (221, 160, 221), (233, 150, 122), (165, 42, 42), (255, 250, 250))
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_color(value: Any) -> tuple[int, int, int] | None:
    """``"#rrggbb"`` or ``[r, g, b]`` (0..255) -> (r, g, b); None for anything else."""
    if isinstance(value, str) and (m := _HEX.match(value.strip())):
        return int(m.group(1)[0:2], 16), int(m.group(1)[2:4], 16), int(m.group(1)[4:6], 16)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        return int(value[0]), int(value[1]), int(value[2])
    return None


def label_colors(labels: Mapping[str, int], dataset_json: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"name", "value", "color": [r, g, b]}]`` in label-value order (colours as the module text says)."""
    given = dataset_json.get("label_colors")
    given = given if isinstance(given, Mapping) else {}
    out = []
    for name, value in sorted(labels.items(), key=lambda item: item[1]):
        color = parse_color(given.get(name)) or PALETTE[(value - 1) % len(PALETTE)]
        out.append({"name": name, "value": value, "color": list(color)})
    return out


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def takes_dicom(model: ServedModel) -> bool:
    """Whether this server predicts a DICOM series zip with the model (pydicom installed, one-channel volume model)."""
    try:
        check_model_for_dicom(model.predictor)
    except ValueError:
        return False
    return _importable("pydicom")


def has_validation(folder: Path) -> bool:
    """Whether a fold (or cross-validation) of the model folder has a ``summary.json`` the report can show."""
    return any(folder.glob("fold_*/validation/summary.json")) or any(folder.glob("crossval_results_folds_*/summary.json"))


def describe_for_page(model: ServedModel) -> dict[str, Any]:
    """The model's label colours, whether DICOM zips / DICOM SEG work here, and whether it has a report."""
    spec = model.predictor.model.spec
    dataset = model.folder / "dataset.json"
    raw = load_json(dataset) if dataset.is_file() else {}
    dicom = takes_dicom(model)
    return {"name": model.name, "labels": label_colors(label_names(model), raw), "channels": dict(spec.channel_names),
            "dicom_zip": dicom, "dicom_seg": dicom and _importable("highdicom"), "report": has_validation(model.folder),
            "max_label": max(label_names(model).values(), default=0)}


class ReportCache:
    """The training report's HTML per model, rendered on first request (a few seconds: the plots) and kept."""

    def __init__(self) -> None:
        self._pages: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, model: ServedModel) -> str:
        """Raises FileNotFoundError when the model folder has no validation (the page then shows no report)."""
        with self._lock:
            if model.name not in self._pages:
                self._pages[model.name] = render_report(model.folder)
            return self._pages[model.name]


def render_report(folder: Path) -> str:
    """The report page of a model folder (worst-case overlays when ``$nnUNet_raw/<dataset>`` holds the raw data)."""
    from nnseg.metrics.report import collect_report
    from nnseg.metrics.report_html import render_html

    if not has_validation(folder):
        raise FileNotFoundError(f"the model folder {folder.name} has no validation (fold_*/validation/summary.json); "
                                "run the final validation (nnUNetv2_train ... --val) to get a report")
    raw_root = os.environ.get("nnUNet_raw")
    raw = Path(raw_root) / folder.parent.name if raw_root else None
    info, folds = collect_report(folder, raw_dataset_folder=raw if raw is not None and raw.is_dir() else None)
    return render_html(info, folds)
