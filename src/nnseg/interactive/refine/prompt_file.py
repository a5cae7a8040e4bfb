"""Corrections for ``nnseg refine``: the prompts JSON file and the ``--point``/``--box`` flags, as typed values.

A prompts file (docs/INTERACTIVE.md, "Refining an automatic segmentation")::

    {"space": "voxel",
     "labels": [{"label": 1, "prompts": [
         {"type": "point", "at": [40, 52, 30]},
         {"type": "point", "at": [44, 50, 30], "positive": false},
         {"type": "box", "box": [[30, 50], [40, 60], [30, 31]]},
         {"type": "box", "corners": [[30, 40, 30], [49, 59, 30]], "positive": false},
         {"type": "scribble", "points": [[30, 40, 30], [35, 45, 30]]},
         {"type": "lasso", "points": [[30, 40, 30], [40, 40, 30], [35, 50, 30]]},
         {"type": "scribble", "mask": "stroke.nii.gz", "positive": false}]}]}

``space`` (top level, or per prompt): ``voxel`` (indices i, j, k of the image file), ``ras`` or ``lps`` (world
millimetres). ``positive`` defaults to true. Relative ``mask`` paths are relative to the prompts file.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg._types import PathLike

SPACES = ("voxel", "ras", "lps")
PROMPT_TYPES = ("point", "box", "scribble", "lasso")
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Prompt:
    """One correction: ``kind`` (point, box, scribble, lasso), its sign, and where it lies.

    Attributes:
        points: the point (one), the two opposite corners of a box (inclusive), the scribble's polyline, or the
            lasso's polygon (on one slice), in ``space``.
        box: a half-open voxel box ``((i0, i1), (j0, j1), (k0, k1))`` (boxes given as ``box``, voxel space only).
        mask: a mask image on the image's grid (scribble or lasso): its non-zero voxels are the prompt.
    """

    kind: str
    positive: bool = True
    space: str = "voxel"
    points: tuple[Triple, ...] = ()
    box: tuple[tuple[float, float], ...] | None = None
    mask: Path | None = None


@dataclass(frozen=True)
class LabelPrompts:
    """The corrections of one label (its value, or its name in the automatic model's ``dataset.json``), applied in
    order after seeding the session with the label's mask."""

    label: int | str
    prompts: tuple[Prompt, ...]


def _triple(value: Any, where: str) -> Triple:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and abs(float(v)) < float("inf") for v in value)
    if not ok:
        raise ValueError(f"{where}: expected 3 finite numbers [x, y, z], got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _space(value: Any, where: str) -> str:
    if value not in SPACES:
        raise ValueError(f"{where}: space must be one of {list(SPACES)}, got {value!r}")
    return str(value)


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _box_field(value: Any, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{where}: 'box' must be [[i0, i1], [j0, j1], [k0, k1]] (half-open voxels), got {value!r}")
    pairs = []
    for pair in value:
        lo, hi = _triple([*pair, 0] if isinstance(pair, (list, tuple)) and len(pair) == 2 else None, where)[:2]
        if hi <= lo:
            raise ValueError(f"{where}: each box axis [lo, hi) needs hi > lo, got {list(pair)}")
        pairs.append((lo, hi))
    return tuple(pairs)


def _shape_fields(kind: str, d: Mapping[str, Any], where: str, base: Path) -> dict[str, Any]:
    """``points`` / ``box`` / ``mask`` of one prompt, checked for its kind."""
    if kind == "point":
        return {"points": (_triple(d.get("at"), f"{where} 'at'"),)}
    if kind == "box":
        if ("box" in d) == ("corners" in d):
            raise ValueError(f"{where}: a box needs either 'box' [[i0, i1], [j0, j1], [k0, k1]] (voxels, half-open) or "
                             "'corners' [[x, y, z], [x, y, z]] (two opposite corners, inclusive)")
        if "box" in d:
            return {"box": _box_field(d["box"], where)}
        corners = d["corners"]
        if not isinstance(corners, (list, tuple)) or len(corners) != 2:
            raise ValueError(f"{where}: 'corners' must be two points [[x, y, z], [x, y, z]], got {corners!r}")
        return {"points": tuple(_triple(c, f"{where} corner") for c in corners)}
    if ("points" in d) == ("mask" in d):
        raise ValueError(f"{where}: a {kind} needs either 'points' (a {'polyline' if kind == 'scribble' else 'polygon'}"
                         " [[x, y, z], ...]) or 'mask' (an image file on the image's grid)")
    if "mask" in d:
        if not isinstance(d["mask"], str):
            raise ValueError(f"{where}: 'mask' must be a file path, got {d['mask']!r}")
        return {"mask": base / d["mask"]}
    points = d["points"]
    least = 1 if kind == "scribble" else 3
    if not isinstance(points, (list, tuple)) or len(points) < least:
        raise ValueError(f"{where}: 'points' must list at least {least} point(s) [x, y, z], got {points!r}")
    return {"points": tuple(_triple(p, f"{where} point {n}") for n, p in enumerate(points))}


def parse_prompt(d: Any, *, where: str, space: str, base: Path) -> Prompt:
    """One prompt object of a prompts file (``where`` names it in errors)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: a prompt must be an object with a 'type', got {d!r}")
    kind = d.get("type")
    if kind not in PROMPT_TYPES:
        raise ValueError(f"{where}: 'type' must be one of {list(PROMPT_TYPES)}, got {kind!r}")
    _check_keys(d, {"type", "positive", "space", "at", "box", "corners", "points", "mask"}, where)
    positive = d.get("positive", True)
    if not isinstance(positive, bool):
        raise ValueError(f"{where}: 'positive' must be true or false, got {positive!r}")
    prompt_space = _space(d.get("space", space), where)
    fields = _shape_fields(str(kind), d, where, base)
    if "box" in fields and prompt_space != "voxel":
        raise ValueError(f"{where}: 'box' is in voxels; give world boxes as 'corners' [[x, y, z], [x, y, z]]")
    return Prompt(kind=str(kind), positive=positive, space=prompt_space, **fields)


def parse_label(value: Any, where: str) -> int | str:
    """A label to refine: a positive integer, or a name (resolved with the automatic model's ``dataset.json``)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    elif isinstance(value, str) and value.strip() and value.strip() != "background":
        return value.strip()
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 < int(value) <= 65535:
        raise ValueError(f"{where}: the label to refine must be an integer in 1..65535 (0 is the background) or "
                         f"a label name of the automatic model, got {value!r}")
    return int(value)


def parse_prompts(d: Any, *, source: PathLike) -> list[LabelPrompts]:
    """The labels and prompts of a prompts file's JSON (``source`` names the file in errors)."""
    src = Path(source)
    if not isinstance(d, Mapping) or not isinstance(d.get("labels"), list) or not d["labels"]:
        raise ValueError(f"{src}: expected {{\"space\": \"voxel\", \"labels\": [{{\"label\": 1, \"prompts\": [...]}}]}} "
                         "with at least one label (docs/INTERACTIVE.md)")
    _check_keys(d, {"space", "labels"}, str(src))
    space = _space(d.get("space", "voxel"), str(src))
    out = []
    for n, entry in enumerate(d["labels"]):
        where = f"{src}: labels[{n}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("prompts"), list):
            raise ValueError(f"{where}: expected {{\"label\": 1, \"prompts\": [...]}}, got {entry!r}")
        _check_keys(entry, {"label", "prompts"}, where)
        prompts = tuple(parse_prompt(p, where=f"{where}.prompts[{m}]", space=space, base=src.parent)
                        for m, p in enumerate(entry["prompts"]))
        out.append(LabelPrompts(label=parse_label(entry.get("label"), where), prompts=prompts))
    return out


def read_prompts_file(path: PathLike) -> list[LabelPrompts]:
    """Read and check a prompts JSON file.

    Raises:
        FileNotFoundError: the file is missing. ValueError: not JSON, or a bad entry (its position named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist (--prompts)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file ({e}); see docs/INTERACTIVE.md for the prompts format") from None
    return parse_prompts(d, source=path)


def flag_prompt(kind: str, text: str, *, positive: bool, space: str) -> Prompt:
    """A prompt from a command-line flag: ``x,y,z`` for a point, ``x0,y0,z0,x1,y1,z1`` (opposite corners, inclusive)
    for a box."""
    flag = f"--{'' if positive else 'negative-'}{kind} {text}"
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    count = 3 if kind == "point" else 6
    if len(values) != count:
        shape = "x,y,z" if kind == "point" else "x0,y0,z0,x1,y1,z1 (two opposite corners)"
        raise ValueError(f"{flag}: expected {count} comma-separated numbers {shape}")
    points = tuple(_triple(values[i:i + 3], flag) for i in range(0, count, 3))
    return Prompt(kind=kind, positive=positive, space=_space(space, flag), points=points)


def merge_flag_prompts(from_file: Sequence[LabelPrompts], label: int | str | None,
                       flags: Sequence[Prompt]) -> list[LabelPrompts]:
    """The file's labels, then the flags' prompts for ``label`` (``--label``)."""
    out = list(from_file)
    if flags and label is None:
        raise ValueError("--point/--box flags need --label L (the label they correct)")
    if label is not None:
        out.append(LabelPrompts(label=label, prompts=tuple(flags)))
    if not out:
        raise ValueError("nothing to refine: give --label L with --point/--box flags, or --prompts FILE.json")
    return out
