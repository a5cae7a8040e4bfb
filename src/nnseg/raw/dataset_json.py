"""nnU-Net v2 ``dataset.json``: load, validate and save it without losing anything.

The file (``nnUNet_raw/DatasetXXX_Name/dataset.json``) declares the input channels, the labels (ints, or lists
of ints for regions), the number of training cases and the file ending. Keys nnseg does not use (``name``,
``description``, ``licence``, ...) are kept in ``DatasetSpec.extra`` and written back in their original order, so
loading and saving a real file gives the same JSON.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nnseg._types import LabelOrRegion, PathLike
from nnseg.jsonio import load_json, save_json
from nnseg.raw.ignore_labels import IGNORE_KEY, ignore_labels_problems, ignore_names
from nnseg.raw.partial_labels import PartialLabels, partial_labels_problems

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_KNOWN_KEYS = REQUIRED_KEYS + ("regions_class_order", "overwrite_image_reader_writer", "dataset")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_region(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 1


def _label_ints(labels: Mapping[str, Any], ignored: tuple[str, ...] = ("ignore",)) -> list[int]:
    """Every integer used by a label or region, the ``ignored`` names left out, sorted and unique."""
    found: set[int] = set()
    for name, value in labels.items():
        if name in ignored:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if _is_int(v):
                found.add(v)
    return sorted(found)


def _label_value_problems(labels: Mapping[str, Any]) -> list[str]:
    out = []
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(_is_int(v) for v in values):
            out.append(f"label {name!r} has value {value!r}; use an int (or a list of ints for a region), "
                       f"e.g. \"{name}\": 1")
        elif name == "ignore" and isinstance(value, (list, tuple)):
            out.append(f"label 'ignore' is {value!r}; the ignore label must be a single int (the highest label)")
    return out


def _consecutive_problems(labels: Mapping[str, Any]) -> list[str]:
    out = []
    if "background" not in labels:
        out.append(f"labels {dict(labels)} have no 'background'; add \"background\": 0")
    elif labels["background"] != 0:
        out.append(f"label 'background' is {labels['background']!r}; background must be 0")
    ints = _label_ints(labels)
    if ints and ints != list(range(len(ints))):
        out.append(f"label values {ints} are not consecutive ints starting at 0; renumber them 0, 1, 2, ...")
    ignore = labels.get("ignore")
    if _is_int(ignore) and ints and ignore != max(ints) + 1:
        out.append(f"the ignore label is {ignore} but the highest other label is {max(ints)}; the ignore label must "
                   f"be the highest value, one above the others: set \"ignore\": {max(ints) + 1}")
    return out


def _region_problems(d: Mapping[str, Any]) -> list[str]:
    labels = d["labels"]
    if not any(_is_region(v) for v in labels.values()):
        return []
    order = d.get("regions_class_order")
    if order is None:
        return ["labels contain regions (list values) but 'regions_class_order' is missing; add it, e.g. "
                "\"regions_class_order\": [1, 2, 3] (one int per foreground region, in painting order)"]
    n_regions = len(_regions(labels))
    if not isinstance(order, list) or len(order) != n_regions or not all(_is_int(v) for v in order):
        return [f"regions_class_order {order!r} must be a list of {n_regions} ints (one per foreground region)"]
    return []


def dataset_json_problems(d: Mapping[str, Any]) -> list[str]:
    """Every problem of a ``dataset.json`` dict, as messages that say the fix (empty list: valid).

    ``modality`` counts as ``channel_names`` (legacy key).
    """
    if not isinstance(d, Mapping):
        return [f"dataset.json must hold a JSON object, got {type(d).__name__}"]
    problems = []
    present = set(d) | ({"channel_names"} if "modality" in d else set())
    missing = [k for k in REQUIRED_KEYS if k not in present]
    if missing:
        problems.append(f"required keys {missing} are missing; dataset.json needs {list(REQUIRED_KEYS)}")
    channels = d.get("channel_names", d.get("modality"))
    if channels is not None and (not isinstance(channels, Mapping) or not channels
                                 or sorted(channels) != [str(i) for i in range(len(channels))]):
        problems.append(f"channel_names {channels!r} must map \"0\", \"1\", ... to channel names, e.g. {{\"0\": \"CT\"}}")
    if "numTraining" in d and not (_is_int(d["numTraining"]) and d["numTraining"] >= 0):
        problems.append(f"numTraining is {d['numTraining']!r}; it must be the number of training cases (an int)")
    if "file_ending" in d and not (isinstance(d["file_ending"], str) and d["file_ending"].startswith(".")):
        problems.append(f"file_ending is {d['file_ending']!r}; it must start with a dot, e.g. \".nii.gz\"")
    if "labels" in d:
        label_problems = labels_problems(d)
        problems += label_problems or ignore_labels_problems(d)
    return problems + partial_labels_problems(d)


def labels_problems(d: Mapping[str, Any]) -> list[str]:
    """The problems of ``d['labels']`` (and ``regions_class_order``) alone; ``d`` must have a ``labels`` key."""
    labels = d["labels"]
    if not isinstance(labels, Mapping) or not labels:
        return [f"labels {labels!r} must map names to ints, e.g. {{\"background\": 0, \"tumor\": 1}}"]
    return _label_value_problems(labels) or (_consecutive_problems(labels) + _region_problems(d))


def _regions(labels: Mapping[str, Any], ignored: tuple[str, ...] = ("ignore",)) -> list[LabelOrRegion]:
    out: list[LabelOrRegion] = []
    for name, value in labels.items():
        if name in ignored:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if values == [0]:
            continue
        out.append(tuple(values) if isinstance(value, (list, tuple)) else value)
    return out


@dataclass
class DatasetSpec:
    """The content of an nnU-Net v2 ``dataset.json``.

    Attributes:
        channel_names: channel index as string ("0", "1", ...) -> channel name (the name selects normalisation,
            e.g. "CT").
        labels: label name -> int, or -> list of ints for a region; ``background`` is 0, ``ignore`` the highest
            (more ignore labels: ``extra['ignore_labels']``, :mod:`nnseg.raw.ignore_labels`).
        num_training: ``numTraining``.
        file_ending: e.g. ``.nii.gz`` or ``.png``.
        regions_class_order: painting order of the regions (required when labels contain regions), or None.
        overwrite_image_reader_writer: reader class name that overrides automatic selection, or None.
        dataset: explicit cases ``{case: {"images": [...], "label": ...}}`` (paths relative to the raw dataset
            folder) replacing the ``imagesTr``/``labelsTr`` convention, or None.
        extra: every other key, in file order.
        key_order: the order of the keys as read (used on write; new keys go to the end).
    """

    channel_names: dict[str, str]
    labels: dict[str, Any]
    num_training: int
    file_ending: str
    regions_class_order: list[int] | None = None
    overwrite_image_reader_writer: str | None = None
    dataset: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, source: PathLike | None = None) -> "DatasetSpec":
        """Validate and wrap a ``dataset.json`` dict.

        Raises:
            ValueError: listing every problem found (``source`` names the file in the message).
        """
        problems = dataset_json_problems(d)
        where = f"{source}" if source is not None else "dataset.json"
        if problems:
            raise ValueError(f"{where} is invalid:\n  - " + "\n  - ".join(problems))
        d = dict(d)
        order = list(d)
        if "channel_names" not in d:
            warnings.warn(f"{where} uses the legacy key 'modality'; rename it to 'channel_names'", UserWarning,
                          stacklevel=2)
            d["channel_names"] = d.pop("modality")
            order[order.index("modality")] = "channel_names"
        return cls(
            channel_names={str(k): str(v) for k, v in d["channel_names"].items()},
            labels=dict(d["labels"]),
            num_training=int(d["numTraining"]),
            file_ending=d["file_ending"],
            regions_class_order=list(d["regions_class_order"]) if d.get("regions_class_order") is not None else None,
            overwrite_image_reader_writer=d.get("overwrite_image_reader_writer"),
            dataset=dict(d["dataset"]) if d.get("dataset") is not None else None,
            extra={k: v for k, v in d.items() if k not in _KNOWN_KEYS},
            key_order=tuple(order),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``dataset.json`` dict, keys in the order they were read (new keys at the end)."""
        values: dict[str, Any] = {
            "channel_names": dict(self.channel_names), "labels": dict(self.labels),
            "numTraining": self.num_training, "file_ending": self.file_ending,
        }
        for key in ("regions_class_order", "overwrite_image_reader_writer", "dataset"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        values.update(self.extra)
        out = {k: values[k] for k in self.key_order if k in values}
        out.update({k: v for k, v in values.items() if k not in out})
        return out

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def has_regions(self) -> bool:
        return any(_is_region(v) for v in self.labels.values())

    @property
    def ignore_names(self) -> tuple[str, ...]:
        """Label names nnseg ignores: ``"ignore"`` and those of ``ignore_labels`` (:mod:`nnseg.raw.ignore_labels`)."""
        return ignore_names({"labels": self.labels, IGNORE_KEY: self.extra.get(IGNORE_KEY)})

    @property
    def ignore_values(self) -> tuple[int, ...]:
        """Every ignore label value, sorted (empty without ignore labels)."""
        return tuple(sorted(int(self.labels[n]) for n in self.ignore_names))

    @property
    def ignore_label(self) -> int | None:
        """The ignore label of training: the lowest ignore value (preprocessing writes every other one as it)."""
        values = self.ignore_values
        return values[0] if values else None

    @property
    def all_labels(self) -> list[int]:
        """Every label integer (background included, ignore labels left out), sorted."""
        return _label_ints(self.labels, self.ignore_names)

    @property
    def foreground_labels(self) -> list[int]:
        return [v for v in self.all_labels if v != 0]

    @property
    def foreground_regions(self) -> list[LabelOrRegion]:
        """Regions as nnU-Net lists them: ints stay ints, lists become tuples; background and ignore left out."""
        return _regions(self.labels, self.ignore_names)

    @property
    def foreground_labels_or_regions(self) -> list[LabelOrRegion]:
        """What the network predicts: the regions when labels contain regions, else the foreground labels."""
        return self.foreground_regions if self.has_regions else list(self.foreground_labels)

    @property
    def partial_labels(self) -> PartialLabels | None:
        """The cases that annotate only some labels (``annotated_labels``; :mod:`nnseg.raw.partial_labels`)."""
        return PartialLabels.from_dataset_json(self.to_json(), self.foreground_labels_or_regions)

    @property
    def allowed_label_values(self) -> list[int]:
        """Values a label map may contain: all labels plus the ignore labels."""
        return self.all_labels + list(self.ignore_values)


def load_dataset_json(path: PathLike) -> DatasetSpec:
    """Read and validate ``dataset.json`` (a folder is accepted too: its ``dataset.json`` is read).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid JSON or not a valid nnU-Net v2 dataset.json (every problem listed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; every raw dataset folder needs a dataset.json "
                                "(see nnU-Net's dataset_format documentation)")
    return DatasetSpec.from_json(load_json(path), source=path)


def save_dataset_json(spec: DatasetSpec, path: PathLike) -> None:
    """Write ``dataset.json`` atomically, ``indent=4`` and keys unsorted as nnU-Net does."""
    save_json(spec.to_json(), path, sort_keys=False)
