"""nnU-Net's ``postprocessing.pkl``: written so nnU-Net can apply nnseg's decision, read without trusting it.

nnU-Net stores its postprocessing decision as ``pickle((pp_fns, pp_fn_kwargs))``: a list of functions and a list of
keyword dicts, e.g. ``([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": [1, 2]}])``.
A pickle refers to a function by module and name only (the ``STACK_GLOBAL`` opcode), so nnseg

* **writes** the same bytes nnU-Net's ``pickle.dump`` (protocol 4) writes, with a stand-in object that the pickler
  serialises as a reference to :data:`NNUNET_PP_FUNCTION` without importing nnunetv2;
* **reads** such a file with a restricted unpickler that maps the known function names to nnseg's registered step
  names and builds nothing else but numpy scalars (nnU-Net's label lists hold ``np.int64``); any other global is
  refused by name. Nothing from the file is imported or called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path
from nnseg.safe_pickle import restricted_loads

#: the function nnU-Net pickles for "keep the largest connected component" (module, qualified name).
NNUNET_PP_FUNCTION = ("nnunetv2.postprocessing.remove_connected_components",
                      "remove_all_but_largest_component_from_segmentation")
#: pickled function reference -> nnseg's registered postprocessing step name.
KNOWN_PP_FUNCTIONS: dict[tuple[str, str], str] = {NNUNET_PP_FUNCTION: "remove_all_but_largest_component"}
#: nnseg step name -> the function reference written for nnU-Net.
STEP_TO_NNUNET: dict[str, tuple[str, str]] = {"remove_all_but_largest_component": NNUNET_PP_FUNCTION}
PICKLE_PROTOCOL = 4  # pickle.DEFAULT_PROTOCOL of the Python versions nnU-Net v2 runs on (3.9-3.13)


class GlobalRef:
    """A stand-in that pickles as a reference to the global ``module.name`` (never imported here)."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __repr__(self) -> str:
        return f"GlobalRef({self.module!r}, {self.name!r})"


class _RefPickler(pickle._Pickler):  # type: ignore[name-defined]  # the pure-Python pickler has a dispatch table
    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_ref(self, obj: GlobalRef) -> None:
        # exactly what pickle's save_global writes for protocol >= 4: module, name, STACK_GLOBAL, then memoize
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    dispatch[GlobalRef] = _save_ref


NNUNET_KWARGS = ("labels_or_regions", "background_label")  # what nnU-Net's function accepts


def _nnunet_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments as nnU-Net passes them: only the keys its function takes, defaults left out.

    Raises:
        ValueError: an argument nnU-Net's function does not take (e.g. a non-default ``connectivity``).
    """
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if (key == "background_label" and int(value) == 0) or (key == "connectivity" and value is None):
            continue  # nnU-Net's defaults; it never writes them
        if key not in NNUNET_KWARGS:
            raise ValueError(f"postprocessing argument {key}={value!r} has no nnU-Net equivalent (its function takes "
                             f"{list(NNUNET_KWARGS)}); keep the decision in postprocessing.json only")
        out[key] = value
    return out


def postprocessing_pkl_bytes(steps: Sequence[tuple[str, Mapping[str, Any]]]) -> bytes:
    """The bytes nnU-Net's ``save_pickle((pp_fns, pp_fn_kwargs), ...)`` writes for ``steps``.

    Args:
        steps: ``(registered step name, kwargs)`` pairs; kwargs hold plain ints, lists and tuples.

    Raises:
        ValueError: a step has no nnU-Net equivalent.
    """
    fns: list[GlobalRef] = []
    kwargs: list[dict[str, Any]] = []
    refs: dict[tuple[str, str], GlobalRef] = {}
    for name, kw in steps:
        if name not in STEP_TO_NNUNET:
            raise ValueError(f"postprocessing step {name!r} has no nnU-Net equivalent; known: {sorted(STEP_TO_NNUNET)}")
        key = STEP_TO_NNUNET[name]
        fns.append(refs.setdefault(key, GlobalRef(*key)))  # one object, as the same function pickled twice
        kwargs.append(_nnunet_kwargs(kw))
    buffer = io.BytesIO()
    _RefPickler(buffer, protocol=PICKLE_PROTOCOL).dump((fns, kwargs))
    return buffer.getvalue()


def save_postprocessing_pkl(steps: Sequence[tuple[str, Mapping[str, Any]]], path: PathLike) -> None:
    """Write ``postprocessing.pkl`` atomically (see :func:`postprocessing_pkl_bytes`)."""
    data = postprocessing_pkl_bytes(steps)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class _KnownFunction:
    def __init__(self, step: str) -> None:
        self.step = step


def _known_functions() -> dict[tuple[str, str], Any]:
    return {key: _KnownFunction(step) for key, step in KNOWN_PP_FUNCTIONS.items()}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers; lists and tuples kept as such (tuples are regions)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _decode(obj: Any, path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not (isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(o, list) for o in obj)):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected nnU-Net's (pp_fns, pp_fn_kwargs) pair of lists")
    fns, kwargs = obj
    if len(fns) != len(kwargs):
        raise ValueError(f"{path}: {len(fns)} functions but {len(kwargs)} keyword dicts; regenerate the file")
    steps = []
    for fn, kw in zip(fns, kwargs):
        if not isinstance(fn, _KnownFunction) or not isinstance(kw, dict):
            raise ValueError(f"{path}: entry {fn!r} is not a known postprocessing function with a keyword dict")  # noqa: TRY004
        steps.append((fn.step, {str(k): _plain(v) for k, v in kw.items()}))
    return steps


def load_postprocessing_pkl(path: PathLike) -> list[tuple[str, dict[str, Any]]]:
    """Read nnU-Net's ``postprocessing.pkl`` as ``(registered step name, kwargs)`` pairs.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it references any function other than nnU-Net's known postprocessing functions (named in the
            message), or is not a ``(pp_fns, pp_fn_kwargs)`` pair.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"postprocessing file {path} does not exist; run nnUNetv2_determine_postprocessing "
                                "(nnseg determine-pp) first")
    try:
        obj = restricted_loads(path.read_bytes(), extra=_known_functions())
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to read {path}: it references {e}, which is not one of nnU-Net's postprocessing "
                         f"functions {sorted('.'.join(k) for k in KNOWN_PP_FUNCTIONS)}; use postprocessing.json") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is not a readable postprocessing pickle ({type(e).__name__}: {e})") from None
    return _decode(obj, path)
