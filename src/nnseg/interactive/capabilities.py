"""``inference_info.json`` of an nnInteractive model folder: which prompts the network takes, on which channels.

The facts (defaults, channel layout, legacy ``inference_session_class.json``) are described in docs/INTERACTIVE.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTERACTION_KINDS: tuple[str, ...] = ("scribble", "lasso", "points", "bbox2d", "bbox3d")
SESSION_CLASS = "nnInteractiveInferenceSession"
SESSION_VERSION = "2.6.0"  # the nnInteractive session version whose behaviour nnseg follows
DEFAULT_SUPPORTED = {"scribble": True, "lasso": True, "points": True, "bbox2d": True, "bbox3d": False}
DEFAULT_MAPPING: dict[str, Any] = {"prev_seg": 0, "bbox2d": (1, 2), "bbox3d": (1, 2), "lasso": (1, 2),
                                   "points": (3, 4), "scribble": (5, 6)}


@dataclass(frozen=True)
class Capabilities:
    """What a model folder's network accepts and the session defaults it asks for.

    Attributes:
        supported: prompt kind -> supported (``points``, ``bbox2d``, ``bbox3d``, ``scribble``, ``lasso``).
        num_interaction_channels: prompt channels plus the previous-mask channel.
        prev_seg: index of the previous-mask channel; ``pairs``: kind -> (positive, negative) channel (all >= 0).
        point_radius, scribble_thickness, interaction_decay, pad_mode: session defaults.
        raw: the JSON as read (``{}`` for a legacy folder).
    """

    supported: dict[str, bool]
    supports_initial_label: bool
    supports_zero_shot_label_refinement: bool
    num_interaction_channels: int
    prev_seg: int
    pairs: dict[str, tuple[int, int]]
    point_radius: float = 4
    scribble_thickness: list[float] = field(default_factory=lambda: [2, 2, 2])
    interaction_decay: float = 0.98
    pad_mode: str = "constant"
    raw: dict[str, Any] = field(default_factory=dict)

    def channel_mapping_json(self) -> dict[str, Any]:
        """The mapping as the server's ``/capabilities`` shows it (pairs as lists)."""
        out: dict[str, Any] = {"prev_seg": self.prev_seg}
        out.update({k: list(v) for k, v in self.pairs.items()})
        return out

    def is_supported(self, kind: str) -> bool:
        if kind == "initial_label":
            return self.supports_initial_label
        return bool(self.supported.get(kind, False))


def _pair(name: str, value: Any, source: Path) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{source}: channel_mapping[{name!r}] must be a [positive, negative] pair of channel "
                         f"indices, got {value!r}")
    return int(value[0]), int(value[1])


def _count_from_mapping(mapping: Mapping[str, Any]) -> int:
    indices = [int(v) for k, v in mapping.items() if k == "prev_seg"]
    indices += [int(i) for k, v in mapping.items() if k != "prev_seg" for i in v]
    positive = max([i + 1 for i in indices if i >= 0], default=0)
    negative = max([-i for i in indices if i < 0], default=0)
    return max(positive, negative, 1)


def _check_keys(d: Mapping[str, Any], source: Path) -> None:
    unknown = sorted(set(d.get("supported_interactions", {})) - set(INTERACTION_KINDS))
    if unknown:
        raise ValueError(f"{source}: supported_interactions names unknown prompt kinds {unknown}; "
                         f"known: {list(INTERACTION_KINDS)}")
    unknown = sorted(set(d.get("channel_mapping", {})) - set(INTERACTION_KINDS) - {"prev_seg"})
    if unknown:
        raise ValueError(f"{source}: channel_mapping has unknown keys {unknown}; known: "
                         f"{['prev_seg', *INTERACTION_KINDS]}")
    required = d.get("inference_class", SESSION_CLASS)
    if required != SESSION_CLASS:
        raise ValueError(f"{source}: the model needs the session class {required!r}; nnseg runs models made for "
                         f"{SESSION_CLASS!r}")


def capabilities_from_json(d: Mapping[str, Any], *, source: Path) -> Capabilities:
    """Parse the ``inference_info.json`` dict (missing keys take nnInteractive's defaults).

    Raises:
        ValueError: unknown prompt kinds or mapping keys, a malformed channel pair, an index outside the channels,
            or a session class other than nnInteractive's.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{source} must hold a JSON object, got {type(d).__name__}")
    _check_keys(d, source)
    mapping: dict[str, Any] = dict(DEFAULT_MAPPING)
    for k, v in dict(d.get("channel_mapping", {})).items():
        mapping[k] = int(v) if k == "prev_seg" else _pair(k, v, source)
    n = int(d["interaction_channels"]) + 1 if "interaction_channels" in d else _count_from_mapping(mapping)
    flat = [mapping["prev_seg"], *[i for k, v in mapping.items() if k != "prev_seg" for i in v]]
    if any(not -n <= i < n for i in flat):
        raise ValueError(f"{source}: channel_mapping {dict(d.get('channel_mapping', {}))} names channels outside "
                         f"the {n} interaction channels")
    pos = lambda i: i if i >= 0 else n + i  # noqa: E731
    thickness = d.get("preferred_scribble_thickness", [2, 2, 2])
    return Capabilities(
        supported={**DEFAULT_SUPPORTED, **{k: bool(v) for k, v in dict(d.get("supported_interactions", {})).items()}},
        supports_initial_label=bool(d.get("supports_initial_label", True)),
        supports_zero_shot_label_refinement=bool(d.get("supports_zero_shot_label_refinement", True)),
        num_interaction_channels=n, prev_seg=pos(int(mapping["prev_seg"])),
        pairs={k: (pos(v[0]), pos(v[1])) for k, v in mapping.items() if k != "prev_seg"},
        point_radius=d.get("point_radius", 4),
        scribble_thickness=list(thickness) if isinstance(thickness, (list, tuple)) else [thickness] * 3,
        interaction_decay=float(d.get("interaction_decay", 0.98)), pad_mode=str(d.get("pad_mode_image", "constant")),
        raw=dict(d))


def read_capabilities(folder: Path) -> Capabilities:
    """Capabilities of a model folder from ``inference_info.json`` (or the legacy ``inference_session_class.json``).

    Raises:
        FileNotFoundError: neither file exists.
        ValueError: the file is not valid JSON or fails :func:`capabilities_from_json`.
    """
    modern, legacy = folder / "inference_info.json", folder / "inference_session_class.json"
    path = modern if modern.is_file() else legacy
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no inference_info.json (nor the older inference_session_class.json): "
                                "is it an nnInteractive model folder? An nnU-Net model folder runs with nnUNetv2_predict")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot read {path}: {e}; it must be a JSON object") from None
    if path == legacy:
        content = {"interaction_decay": 0.9} if isinstance(content, str) else {
            k: content[k] for k in ("point_radius", "preferred_scribble_thickness", "interaction_decay",
                                    "pad_mode_image") if isinstance(content, dict) and k in content}
    caps = capabilities_from_json(content, source=path)
    if caps.pad_mode != "constant":
        raise ValueError(f"{path}: pad_mode_image {caps.pad_mode!r} is not supported; only 'constant' is")
    return caps
