"""The pure pieces of the model report: its dataclasses, the validation Dice table and the Dice box plot.

Shared by :mod:`nnseg.metrics.report` (collects them) and :mod:`nnseg.metrics.report_html` (renders them), so
neither imports the other.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnseg.metrics.overlap import key_to_label_or_region

__all__ = ["CaseImage", "DiceTable", "FoldResult", "ModelInfo", "boxplot_png", "case_identifier", "dice_table",
           "worst_cases"]


@dataclass(frozen=True)
class ModelInfo:
    """What the results folder name ``<Trainer>__<Plans>__<configuration>`` and its parent say about a model."""

    dataset: str
    trainer: str
    plans: str
    configuration: str
    folder: str
    label_names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseImage:
    """One worst case: its mean foreground Dice and the side-by-side overlay PNG (or why there is none)."""

    identifier: str
    mean_dice: float
    png: bytes | None
    note: str = ""


@dataclass(frozen=True)
class FoldResult:
    """Everything the page shows for one fold folder."""

    name: str
    progress_png: bytes | None
    summary: Mapping[str, Any] | None
    worst: Sequence[CaseImage] = ()
    notes: Sequence[str] = ()
    run_info: Mapping[str, str] = field(default_factory=dict)
    architecture: str | None = None


@dataclass(frozen=True)
class DiceTable:
    """Validation Dice per case (rows) and label/region (columns, ``summary.json`` keys); NaN = empty ref and pred."""

    labels: list[str]
    cases: list[tuple[str, list[float]]]
    mean: list[float]
    foreground_mean: float


def _sort_key(key: str) -> tuple[int, tuple[int, ...]]:
    value = key_to_label_or_region(key)
    return (0, (int(value),)) if isinstance(value, int) else (1, tuple(int(v) for v in value))


def case_identifier(file_name: str) -> str:
    """``/a/b/case_001.nii.gz`` -> ``case_001`` (nnU-Net's known file endings stripped, else the last suffix)."""
    name = Path(file_name.replace("\\", "/")).name
    for ending in (".nii.gz", ".ome.tiff", ".ome.tif", ".nrrd", ".nii", ".mha", ".png", ".bmp", ".tif", ".tiff", ".gipl"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else math.nan


def dice_table(summary: Mapping[str, Any]) -> DiceTable:
    """The Dice of a ``summary.json`` dict (as nnU-Net writes it) per case and label.

    Raises:
        ValueError: ``summary`` lacks ``metric_per_case`` (not a ``summary.json``).
    """
    if "metric_per_case" not in summary:
        raise ValueError(f"not a summary.json dict (keys {sorted(summary)}); expected metric_per_case, mean, foreground_mean")
    per_case = summary["metric_per_case"]
    labels = sorted({k for c in per_case for k in c["metrics"]} | set(summary.get("mean", {})), key=_sort_key)
    labels = [k for k in labels if k != "0"]
    cases = []
    for c in per_case:
        dice = [float(c["metrics"].get(k, {}).get("Dice", math.nan)) for k in labels]
        cases.append((case_identifier(str(c.get("prediction_file") or c.get("reference_file"))), dice))
    mean = []
    for i, k in enumerate(labels):
        stored = summary.get("mean", {}).get(k, {}).get("Dice")
        mean.append(float(stored) if stored is not None else _nanmean([d[i] for _, d in cases]))
    fg = summary.get("foreground_mean", {}).get("Dice")
    return DiceTable(labels=labels, cases=cases, mean=mean, foreground_mean=float(fg) if fg is not None else _nanmean(mean))


def worst_cases(table: DiceTable, n: int) -> list[tuple[str, float]]:
    """The ``n`` cases with the lowest mean foreground Dice (NaN labels skipped; all-NaN cases never count as worst)."""
    scored = [(cid, _nanmean(d)) for cid, d in table.cases]
    ranked = sorted((s for s in scored if not math.isnan(s[1])), key=lambda s: (s[1], s[0]))
    return ranked[: max(n, 0)]


def boxplot_png(summary: Mapping[str, Any], *, label_names: Mapping[str, str] | None = None) -> bytes:
    """A box plot (with the individual cases as dots) of per-case Dice per label, as PNG bytes (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = dice_table(summary)
    names = dict(label_names or {})
    columns = [(k, [d[i] for _, d in table.cases if not math.isnan(d[i])]) for i, k in enumerate(table.labels)]
    columns = [(k, v) for k, v in columns if v]
    many = len(columns) > 8  # narrower boxes, vertical tick labels; the width is capped at 2400 px
    fig = Figure(figsize=(min(24.0, max(4.0, (0.45 if many else 1.3) * len(columns) + 2.0)), 5.5 if many else 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if columns:
        ax.boxplot([v for _, v in columns], widths=0.5, showfliers=False)
        jitter = np.random.default_rng(0)
        for i, (_, values) in enumerate(columns, start=1):
            ax.plot(i + jitter.uniform(-0.12, 0.12, len(values)), values, "o", ms=3, alpha=0.6, color="tab:blue")
        ticks = [(f"{names[k]} ({k})" if many else f"{names[k]}\n({k})") if k in names else k for k, _ in columns]
        ax.set_xticks(range(1, len(columns) + 1), ticks, rotation=90 if many else 0, fontsize=7 if many else None)
    else:
        ax.text(0.5, 0.5, "no cases with a defined Dice", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("Dice per case")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
