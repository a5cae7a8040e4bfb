"""Rewrite references to the flat ``nnseg.predictions.X`` modules (issue 26's layout) to their new homes.

``predictions/`` was 33 flat modules; they now live in sub-packages by concept (``inference``, ``export``, ``run``,
``dicom``), model sharing in ``nnseg.sharing`` and training-time validation in ``nnseg.launch``. :data:`MOVES` is
the one old -> new table. The script rewrites, in the files it is given:

* dotted names anywhere in the text: ``from nnseg.predictions.export import x``, ``import nnseg.predictions.predict
  as p``, ``mock.patch("nnseg.predictions.pipeline.get_io")``, ``python -m nnseg.predictions.X``, ``:func:`nnseg.
  predictions.run.run_prediction``` in docstrings and Markdown, and the bare ``predictions.X`` of prose;
* ``from nnseg.predictions import X`` / ``from . import X`` (a submodule imported by name), aliased to keep the name;
* relative imports ``from .X import y`` in files under ``predictions/`` or ``sharing/`` (made absolute);
* file paths ``src/nnseg/predictions/X.py`` and ``predictions/X.py``.

Two new sub-packages carry an old module's name (``export``, ``run``). A dotted name followed by one of the new
package's submodules (``nnseg.predictions.run.pipeline``), or ``from nnseg.predictions.run import pipeline``, is
read as the new layout and left alone, so running the script twice changes nothing; any other
``nnseg.predictions.run[.attr]`` is the old module (now ``nnseg.predictions.request``). Likewise
``from nnseg.predictions import predict`` is read as the new facade's function, while a dotted
``nnseg.predictions.predict`` is the old module.

Run: ``python tools/rewrite_imports.py FILE...`` (``git ls-files -z | xargs -0 python tools/rewrite_imports.py``);
``--check`` lists the files it would change and exits 1 if any, without writing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# old module under nnseg.predictions -> new dotted name under nnseg
MOVES: dict[str, str] = {
    # inference: a model folder and its networks -> logits
    "checkpoint": "predictions.inference.checkpoint",
    "defaults": "predictions.inference.defaults",
    "model_folder": "predictions.inference.model_folder",
    "options": "predictions.inference.options",
    "tta": "predictions.inference.tta",
    "sliding_window": "predictions.inference.sliding_window",
    "streaming_window": "predictions.inference.streaming_window",
    "memory_plan": "predictions.inference.memory_plan",
    "predictor": "predictions.inference.predictor",
    "onnx_backend": "predictions.inference.onnx_backend",
    # export: logits -> files in the original image space
    "export": "predictions.export.from_logits",
    "predict_io": "predictions.export.predict_io",
    "npz_stream": "predictions.export.npz_stream",
    "slab_resample": "predictions.export.slab_resample",
    "streaming_export": "predictions.export.streaming_export",
    "logit_spill": "predictions.export.logit_spill",
    # run: cases in, files or arrays out, with the checks and the memory plan
    "input_checks": "predictions.run.input_checks",
    "bounded": "predictions.run.bounded",
    "array_case": "predictions.run.array_case",
    "pipeline": "predictions.run.pipeline",
    "predict": "predictions.run.predict",
    # the one request/run pair on top of run/ and dicom/
    "run": "predictions.request",
    # dicom: DICOM folders/zips and DICOMweb studies
    "dicom_predict": "predictions.dicom.dicom_predict",
    "dicomweb": "predictions.dicom.dicomweb",
    "dicomweb_http": "predictions.dicom.dicomweb_http",
    "dicomweb_multipart": "predictions.dicom.dicomweb_multipart",
    # model sharing: its own top-level package
    "export_model": "sharing.export_model",
    "install": "sharing.install",
    "download": "sharing.download",
    "zip_limits": "sharing.zip_limits",
    # training-time validation: next to its only user
    "validation": "launch.validate_cases",
    "next_stage": "launch.next_stage",
    "full_val": "launch.full_val",
}

# new packages that carry an old module's name -> their submodules (a name after them means the new layout)
NEW_PACKAGES: dict[str, set[str]] = {
    old: {new.rpartition(".")[2] for new in MOVES.values() if new.startswith(f"predictions.{old}.")}
    for old in MOVES if any(new.startswith(f"predictions.{old}.") for new in MOVES.values())
}

# names of the new ``nnseg.predictions`` facade that were also old module names: ``from nnseg.predictions import
# predict`` is read as the function (nothing imported the old module that way)
FACADE_NAMES = {"predict"}

_NAMES = "|".join(sorted(MOVES, key=len, reverse=True))
_DOTTED = re.compile(rf"(?<![\w.])(nnseg\.)?predictions\.({_NAMES})(?!\w)")
_PATH = re.compile(rf"(?<![\w.])((?:src/)?nnseg/)?predictions/({_NAMES})\.py(?!\w)")
_FROM_PACKAGE = re.compile(r"^([ \t]*)from (nnseg\.predictions) import ([\w ,]+?)[ \t]*$", re.MULTILINE)
_FROM_DOT = re.compile(r"^([ \t]*)from (\.) import ([\w ,]+?)[ \t]*$", re.MULTILINE)
_RELATIVE = re.compile(rf"^([ \t]*from )\.({_NAMES})( import )", re.MULTILINE)
_IMPORTED = re.compile(r"\s+import\s+\(?\s*([\w\s,]+)")


def _new_layout(old: str, text: str, end: int) -> bool:
    """Whether ``predictions.<old>`` at ``text[:end]`` names the new package of that name, not the old module."""
    subs = NEW_PACKAGES.get(old)
    if not subs:
        return False
    attr = re.match(r"\.(\w+)", text[end:])
    if attr:
        return attr.group(1) in subs
    imported = _IMPORTED.match(text[end:])
    names = [n.split()[0] for n in imported.group(1).split(",") if n.strip()] if imported else []
    return bool(names) and all(n in subs for n in names)


def _dotted(match: re.Match[str]) -> str:
    if _new_layout(match.group(2), match.string, match.end()):
        return match.group(0)
    return (match.group(1) or "") + MOVES[match.group(2)]


def _path(match: re.Match[str]) -> str:
    return (match.group(1) or "") + MOVES[match.group(2)].replace(".", "/") + ".py"


def _from_package(match: re.Match[str]) -> str:
    """``from nnseg.predictions import a, b`` (submodules by name) -> one import per new home, names kept."""
    indent, source, names = match.group(1), match.group(2), [n.strip() for n in match.group(3).split(",")]
    moved = set(MOVES) - (FACADE_NAMES if source == "nnseg.predictions" else set())
    if not any(n.split()[0] in moved for n in names if n):
        return match.group(0)
    lines = []
    for name in names:
        module, _, alias = name.partition(" as ")
        alias = alias.strip() or module
        if module not in moved:
            lines.append(f"{indent}from {source} import {name}")
            continue
        package, _, new = MOVES[module].rpartition(".")
        lines.append(f"{indent}from nnseg.{package} import {new}" + (f" as {alias}" if alias != new else ""))
    return "\n".join(lines)


def rewrite(text: str, *, relative: bool = False) -> str:
    """``text`` with every old module reference replaced; ``relative``: also ``from .X import`` (a predictions file)."""
    if relative:
        text = _RELATIVE.sub(lambda m: f"{m.group(1)}nnseg.{MOVES[m.group(2)]}{m.group(3)}", text)
        text = _FROM_DOT.sub(_from_package, text)
    text = _FROM_PACKAGE.sub(_from_package, text)
    text = _PATH.sub(_path, text)
    return _DOTTED.sub(_dotted, text)


def in_predictions(path: Path) -> bool:
    """Files whose relative imports name the old flat modules: under ``predictions/`` or ``sharing/``."""
    parts = path.resolve().parts
    return any(a == "nnseg" and b in ("predictions", "sharing") for a, b in zip(parts, parts[1:]))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed = []
    for name in (a for a in argv if a != "--check"):
        path = Path(name)
        if not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite(text, relative=path.suffix == ".py" and in_predictions(path))
        if new != text:
            changed.append(name)
            if not check:
                path.write_bytes(new.encode("utf-8"))
    for name in changed:
        print(name)
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
