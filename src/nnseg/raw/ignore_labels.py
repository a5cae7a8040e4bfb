"""Several ignore labels: ``dataset.json``'s ``ignore_labels`` key names labels that nnseg treats like ``ignore``.

nnU-Net allows one ignore label, the key ``"ignore"`` with the highest value. Datasets often mark several kinds of
voxels to leave out (not annotated, uncertain, metal artefact) and want to keep them apart in the label files.
Declare them as ordinary labels, with the highest values (after every class, before ``"ignore"`` if present), and
list them::

    "labels": {"background": 0, "liver": 1, "tumour": 2, "uncertain": 3, "artefact": 4, "ignore": 5},
    "ignore_labels": ["uncertain", "artefact"]

``"ignore"`` is always an ignore label, listed or not. Entries are names or values of ``labels``. nnseg leaves the
voxels of every ignore label out of the loss, draws patches on annotated voxels, never scores them, and trains only
the classes (here background, liver, tumour): preprocessing writes every ignore value as the lowest one (3), so
the preprocessed data has nnU-Net's single ignore label. nnU-Net ignores the key, so the dataset stays valid for
it (it trains the listed labels as classes and ignores only ``"ignore"``). Region datasets keep nnU-Net's single
``"ignore"`` (their ``regions_class_order`` would have to count the listed labels for nnU-Net and not for nnseg).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IGNORE_KEY = "ignore_labels"
EXAMPLE = f'"{IGNORE_KEY}": ["uncertain", "artefact"]'


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def ignore_names(d: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of ``d['labels']`` that are ignore labels: ``"ignore"`` and those ``ignore_labels`` lists (by name or
    value); assumes a checked ``dataset.json`` (see :func:`ignore_labels_problems`)."""
    labels = d.get("labels") or {}
    listed = d.get(IGNORE_KEY) or []
    if not isinstance(labels, Mapping) or not isinstance(listed, list):
        return ("ignore",) if isinstance(labels, Mapping) and "ignore" in labels else ()
    by_value = {v: n for n, v in labels.items() if _is_int(v)}
    names = {e if isinstance(e, str) else by_value.get(e) for e in listed if isinstance(e, (str, int))}
    return tuple(n for n in labels if n == "ignore" or n in names)


def _entry_problem(entry: Any, labels: Mapping[str, Any]) -> str | None:
    by_value = {v: n for n, v in labels.items() if _is_int(v)}
    name = entry if isinstance(entry, str) else by_value.get(entry) if _is_int(entry) else None
    if name is None or name not in labels:
        return (f"{IGNORE_KEY} names {entry!r}, which is not a label of 'labels' ({sorted(labels)}); "
                f"declare it there with the highest values, then list its name, e.g. {EXAMPLE}")
    if not _is_int(labels[name]) or labels[name] == 0:
        return (f"{IGNORE_KEY} names {name!r} = {labels[name]!r}; an ignore label must be a single int above every "
                "class (not background, not a region): give it its own value in 'labels'")
    return None


def _order_problem(labels: Mapping[str, Any], ignored: tuple[str, ...]) -> str | None:
    values = {int(labels[n]) for n in ignored}
    classes = {}
    for name, value in labels.items():
        if name not in ignored:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                classes[v] = name
    clash = sorted(v for v in classes if _is_int(v) and v >= min(values))
    if not clash:
        return None
    return (f"ignore labels {[n for n in ignored]} have values {sorted(values)}, but class "
            f"{classes[clash[0]]!r} uses {clash[0]}; ignore labels must have the highest values: renumber the "
            "classes 0, 1, ... first, then the listed ignore labels, then \"ignore\" (if any) last")


def ignore_labels_problems(d: Mapping[str, Any]) -> list[str]:
    """The problems of ``d['ignore_labels']`` (empty when absent or valid), each naming the fix."""
    listed = d.get(IGNORE_KEY)
    labels = d.get("labels")
    if listed is None or not isinstance(labels, Mapping):
        return []
    if not isinstance(listed, list) or not listed:
        return [f"{IGNORE_KEY} is {listed!r}; it must list label names of 'labels', e.g. {EXAMPLE}"]
    regions = [n for n, v in labels.items() if isinstance(v, (list, tuple)) and len(v) > 1]
    if regions:
        return [f"{IGNORE_KEY} is for label datasets, but 'labels' has regions ({regions}): a region dataset takes "
                "nnU-Net's single \"ignore\" label; write every voxel to leave out as its value and remove the key"]
    problems = [p for p in (_entry_problem(e, labels) for e in listed) if p is not None]
    if problems:
        return problems
    order = _order_problem(labels, ignore_names(d))
    return [order] if order else []
