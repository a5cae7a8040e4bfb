"""Partial labels: ``dataset.json``'s ``annotated_labels`` key says which structures each case has drawn.

Datasets combined from several sources often annotate only some structures per case (liver from one, kidneys from
another). Declare it in ``dataset.json`` (nnU-Net ignores keys it does not know, so the dataset stays valid for it)::

    "annotated_labels": {
        "liver_003": ["liver"],
        "kits_012": ["kidney", "tumor"]
    }

Each entry names the labels (or, for region datasets, the regions) drawn in that case, by name or value. Cases not
listed are fully annotated. In a listed case, background voxels mean "background or one of the structures not
drawn here": training does not punish predicting an undrawn structure there (marginal loss), and validation and
evaluation score only the drawn labels of the case. A listed case must not hold voxels of a structure it does not
list (``nnseg verify`` and the training checks refuse it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nnseg._types import LabelOrRegion
from nnseg.raw.ignore_labels import ignore_names

PARTIAL_KEY = "annotated_labels"


def _items(d: Mapping[str, Any]) -> dict[str, LabelOrRegion]:
    """Foreground label/region names -> value (int, or a tuple for a region); background and ignore labels left out."""
    out: dict[str, LabelOrRegion] = {}
    ignored = ignore_names(d)
    for name, value in d["labels"].items():
        if name in ignored or value == 0 or value == [0]:
            continue
        out[name] = tuple(value) if isinstance(value, (list, tuple)) else value  # as DatasetSpec.foreground_regions
    return out


def _resolve(entry: Any, items: Mapping[str, LabelOrRegion]) -> LabelOrRegion | None:
    if isinstance(entry, str):
        return items.get(entry)
    values = list(items.values())
    key = tuple(entry) if isinstance(entry, list) else entry
    return key if key in values else None


def partial_labels_problems(d: Mapping[str, Any]) -> list[str]:
    """The problems of ``d['annotated_labels']`` (empty when absent or valid), each naming the fix."""
    value = d.get(PARTIAL_KEY)
    if value is None:
        return []
    example = f'"{PARTIAL_KEY}": {{"case_001": ["liver"]}}'
    if not isinstance(value, Mapping):
        return [f"{PARTIAL_KEY} must map case identifiers to lists of label names, e.g. {example}; got {value!r}"]
    items = _items(d) if isinstance(d.get("labels"), Mapping) else {}
    problems = []
    for case, entries in value.items():
        if not isinstance(entries, list) or not entries:
            problems.append(f"{PARTIAL_KEY}[{case!r}] is {entries!r}; list the labels drawn in that case, e.g. {example}")
            continue
        unknown = [e for e in entries if _resolve(e, items) is None]
        if unknown:
            problems.append(f"{PARTIAL_KEY}[{case!r}] names {unknown}, which are not foreground labels of 'labels' "
                            f"({sorted(items)}); use names or values declared there")
    return problems


@dataclass(frozen=True)
class PartialLabels:
    """Per listed case: the foreground labels (or regions) drawn in it, in the order of ``foreground``."""

    foreground: tuple[LabelOrRegion, ...]
    annotated: dict[str, tuple[LabelOrRegion, ...]]

    @classmethod
    def from_dataset_json(cls, d: Mapping[str, Any], foreground: Sequence[LabelOrRegion]) -> "PartialLabels | None":
        """None when ``d`` declares no partial cases (the dataset is fully annotated)."""
        value = d.get(PARTIAL_KEY)
        if not value:
            return None
        items = _items(d)
        fg = tuple(foreground)
        annotated = {str(case): tuple(v for v in fg if v in {_resolve(e, items) for e in entries})
                     for case, entries in value.items()}
        return cls(fg, annotated)

    def scored(self, case: str) -> tuple[int, ...] | None:
        """Indices into ``foreground`` that case ``case`` annotates (None: all, the case is fully annotated)."""
        drawn = self.annotated.get(case)
        return None if drawn is None else tuple(i for i, v in enumerate(self.foreground) if v in drawn)

    def missing(self, case: str) -> tuple[LabelOrRegion, ...]:
        """The foreground labels/regions case ``case`` does not annotate (empty for fully annotated cases)."""
        drawn = self.annotated.get(case)
        return () if drawn is None else tuple(v for v in self.foreground if v not in drawn)

    def missing_sets(self) -> list[tuple[LabelOrRegion, ...]]:
        """The distinct non-empty sets of undrawn structures, in first-seen case order (case codes index them)."""
        out: list[tuple[LabelOrRegion, ...]] = []
        for case in self.annotated:
            m = self.missing(case)
            if m and m not in out:
                out.append(m)
        return out
