"""Refine an automatic segmentation with an interactive model: :class:`RefineRequest` + :func:`run_refinement`.

The seed is an existing label map (a file) or the output of an nnU-Net/nnseg model, which runs first through the one
prediction path (:func:`nnseg.predictions.request.run_prediction`). For each label to refine, the session gets the image
and the label's mask as the initial mask (nnInteractive's initial-mask interaction), then the corrections in order,
each predicted as a click in a viewer would be. The refined label replaces the label in the map (other labels are
kept, except where the refined label now claims their voxels), and the map is written atomically with the image's
geometry. Every input is checked (files, grids, prompts inside the image, prompt kinds the model supports, channel
counts) before a network runs or anything is written.

Voxel coordinates are the indices ``(i, j, k)`` of the image file (as ITK-SNAP, 3D Slicer's IJK and nibabel show
them); the session sees the image in that order (as ``nnseg serve``'s page sends it).

Example:
    >>> run_refinement(RefineRequest(image=["ct_0000.nii.gz"], interactive_model="nnInteractive_v1.0",
    ...     output="refined.nii.gz", segmentation="ct.nii.gz",
    ...     labels=[LabelPrompts(label=1, prompts=(Prompt("point", points=((40, 52, 30),)),))]))  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nnseg._types import Geometry, ImageIO, PathLike
from nnseg.interactive.capabilities import Capabilities
from nnseg.interactive.model import InteractiveModel, load_interactive_model
from nnseg.interactive.refine.memory import check_refine_memory, header_shape
from nnseg.interactive.refine.prompt_file import LabelPrompts, Prompt
from nnseg.interactive.refine.rasterise import SessionPrompt, session_prompt, voxel_to_lps
from nnseg.interactive.session import InteractiveSession
from nnseg.predictions.inference.options import PredictOptions


@dataclass(frozen=True)
class RefineRequest:
    """Everything one refinement needs (checked by :func:`run_refinement` before any work).

    Attributes:
        image: the case's files, one per channel (``CASE_0000.nii.gz``, ...), or the case name (``imagesTs/CASE``).
        interactive_model: an nnInteractive model folder (``inference_info.json``, ``fold_*/checkpoint_final.pth``).
        output: the refined label map (same format as the image, e.g. ``.nii.gz``); written atomically.
        labels: the labels to refine, each with its corrections (applied in the given order).
        segmentation: the automatic segmentation to refine, a label map on the image's grid; or
        model: an nnU-Net/nnseg model folder (``DatasetX/<Trainer>__<Plans>__<config>``) run first with
            ``predict_options``. Exactly one of the two.
        interactive_fold, device, precision, do_autozoom: for the interactive model's session.
        refine_seed: before the corrections, let the interactive model refine each seeded label as a whole
            (nnInteractive's initial mask with ``run_prediction``).
        save_automatic: also write the automatic segmentation here (with ``model``).
        max_memory_gb: memory budget in GB (RAM; free GPU memory on CUDA) [85 % of the free memory]: an image whose
            interactive session does not fit is refused, from its header before its voxels are read
            (:mod:`nnseg.interactive.refine.memory`); also the automatic model's budget unless ``predict_options``
            sets one.
    """

    image: Sequence[PathLike]
    interactive_model: PathLike
    output: PathLike
    labels: Sequence[LabelPrompts]
    segmentation: PathLike | None = None
    model: PathLike | None = None
    predict_options: PredictOptions = field(default_factory=PredictOptions)
    interactive_fold: int | str | None = None
    device: str = "cpu"
    precision: str = "auto"
    do_autozoom: bool = True
    refine_seed: bool = False
    save_automatic: PathLike | None = None
    max_memory_gb: float | None = None


@dataclass
class RefineResult:
    """What a refinement did: the file written, voxels changed per label, the seconds spent."""

    output: Path
    changed_voxels: dict[int, int]
    automatic_s: float = 0.0
    interactive_s: float = 0.0


@dataclass
class _Case:
    io: ImageIO
    image: np.ndarray  # (C, i, j, k)
    geometry: Geometry


def _ending(path: Path, io_endings: Sequence[str]) -> str:
    name = path.name.lower()
    matches = [e for e in io_endings if name.endswith(e)]
    return max(matches, key=len) if matches else path.suffix.lower()


def case_files(image: Sequence[PathLike]) -> list[Path]:
    """The channel files: as given, or for one name that is not a file (``imagesTs/case``) its ``case_XXXX<ending>``
    files, sorted by channel.

    Raises:
        FileNotFoundError: a file is missing, or a case name has no channel files.
    """
    files = [Path(f) for f in image]
    if len(files) == 1 and not files[0].is_file() and files[0].parent.is_dir():
        stem = files[0].name
        found = sorted(p for p in files[0].parent.glob(f"{stem}_[0-9][0-9][0-9][0-9].*") if p.is_file())
        if found:  # the channels of the first file's ending (not sidecar files beside them)
            return [p for p in found if p.name[len(stem) + 5:] == found[0].name[len(stem) + 5:]]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"image file {f} does not exist (-i: the case's files, one per channel, or the "
                                    "case name imagesTs/CASE for imagesTs/CASE_0000.nii.gz, CASE_0001.nii.gz, ...)")
    return files


def _case_io(files: Sequence[Path]) -> ImageIO:
    from nnseg.raw.image_io import IMAGE_IO, SimpleITKIO, determine_io

    endings = sorted({e for n in IMAGE_IO for e in IMAGE_IO[n].supported_file_endings})
    ending = _ending(files[0], endings)
    # SimpleITK reads every NIfTI/NRRD/MHA: no trial read of the example (a whole image) for those endings
    return determine_io(ending) if ending in SimpleITKIO.supported_file_endings else determine_io(ending, files[0])


def _read_case(files: Sequence[Path], io: ImageIO) -> _Case:
    image, geometry = io.read_images(files)
    if image.ndim != 4 or (geometry.sitk_spacing is not None and len(geometry.sitk_spacing) == 2) or image.shape[1] == 1:
        raise ValueError(f"{files[0]} is a 2D image (shape {image.shape[1:]}); interactive models segment 3D images")
    return _Case(io=io, image=image.transpose(0, 3, 2, 1), geometry=geometry)  # a view: the session copies it once


def _check_request(request: RefineRequest) -> None:
    if (request.segmentation is None) == (request.model is None):
        raise ValueError("give the segmentation to refine (--seg FILE) or an automatic model to run first "
                         "(-d/-c/-f/-tr, or -m MODEL_FOLDER), not both and not neither")
    if not request.image:
        raise ValueError("no image: give the case's files, one per channel (-i CASE_0000.nii.gz ...)")
    if request.max_memory_gb is not None and not request.max_memory_gb > 0:
        raise ValueError(f"--max-memory must be a positive number of GB, got {request.max_memory_gb}")
    if request.save_automatic is not None and request.model is None:
        raise ValueError("--save-automatic writes the automatic model's segmentation; it needs an automatic model "
                         "(-d/-c or -m), not --seg")
    if request.segmentation is not None and not Path(request.segmentation).is_file():
        raise FileNotFoundError(f"segmentation {request.segmentation} does not exist (--seg)")
    if request.model is not None and not Path(request.model).is_dir():
        raise FileNotFoundError(f"model folder {request.model} does not exist (-m, or -d/-c/-tr/-p)")
    if not Path(request.interactive_model).is_dir():
        raise FileNotFoundError(f"interactive model folder {request.interactive_model} does not exist (--interactive)")
    for target in (request.output, request.save_automatic):
        if target is not None and Path(target).is_dir():
            raise IsADirectoryError(f"output {target} is a folder; name the label map file to write (e.g. "
                                    "refined.nii.gz)")
    if not request.labels:
        raise ValueError("nothing to refine: give --label L with --point/--box flags, or --prompts FILE.json")
    empty = [lp.label for lp in request.labels if not lp.prompts]
    if empty and not request.refine_seed:
        raise ValueError(f"label(s) {empty} have no corrections; add --point/--box or a --prompts file, or pass "
                         "--refine-seed to let the interactive model refine the seed alone")


def _label_values(request: RefineRequest) -> list[int]:
    """The value of each label to refine: names through the automatic model's ``dataset.json``; with a model, each
    must be one it predicts (a typo would start an empty label)."""
    names = [lp.label for lp in request.labels if isinstance(lp.label, str)]
    if request.model is None:
        if names:
            raise ValueError(f"label name(s) {names} need an automatic model (its dataset.json names the labels); "
                             "give the label values with --seg")
        return [int(lp.label) for lp in request.labels]
    from nnseg.predictions.inference.model_folder import load_trained_model

    spec = load_trained_model(request.model).spec
    known = set(spec.foreground_labels) | set(spec.regions_class_order or [])
    by_name = {k: v for k, v in spec.labels.items() if isinstance(v, int) and v in known}
    values = [by_name.get(lp.label, -1) if isinstance(lp.label, str) else lp.label for lp in request.labels]
    unknown = [lp.label for lp, v in zip(request.labels, values) if v not in known]
    if unknown:
        listed = ", ".join(f"{v} ({k})" for k, v in sorted(by_name.items(), key=lambda kv: kv[1]))
        raise ValueError(f"label(s) {unknown} are not predicted by {request.model}; its labels: {listed}")
    return values


def _check_output_ending(io: ImageIO, *targets: PathLike | None) -> None:
    for target in targets:
        if target is not None and _ending(Path(target), io.supported_file_endings) not in io.supported_file_endings:
            raise ValueError(f"cannot write {target}: the image is read with {io.name}, which writes "
                             f"{list(io.supported_file_endings)}; name the output with one of these endings")


def _on_grid(array: np.ndarray, geometry: Geometry, case: _Case, path: Path) -> np.ndarray:
    """``array`` (a reader's ``(1, k, j, i)``) as ``(i, j, k)``, checked to lie on the image's voxel grid."""
    shape = tuple(case.image.shape[1:])
    grid = array[0].transpose(2, 1, 0)
    a, b = voxel_to_lps(geometry), voxel_to_lps(case.geometry)
    if grid.shape != shape or (a is not None and b is not None and not np.allclose(a, b, rtol=1e-4, atol=1e-3)):
        raise ValueError(f"{path} does not lie on the image's voxel grid (shape {list(grid.shape)} vs "
                         f"{list(shape)}, or another spacing/origin/direction); resample it onto the image first")
    return grid


def _labels_on_grid(path: Path, case: _Case) -> np.ndarray:
    seg, geometry = case.io.read_seg(path)
    grid = _on_grid(seg, geometry, case, path)
    if not np.all(np.isfinite(grid)) or np.any(grid < 0) or np.any(grid != np.round(grid)) or grid.max() > 65535:
        raise ValueError(f"{path} is not a label map (values must be integers in 0..65535)")
    return grid.astype(np.uint16 if grid.max() > 255 else np.uint8)


def _session_prompts(request: RefineRequest, case: _Case, caps: Capabilities) -> list[tuple[int, list[SessionPrompt]]]:
    """Every prompt checked (inside the image, a kind the model takes) and turned into its session call."""
    lps = voxel_to_lps(case.geometry)
    shape = tuple(case.image.shape[1:])
    out = []
    for lp in request.labels:
        calls = []
        for n, prompt in enumerate(lp.prompts):
            what = f"label {lp.label}, correction {n + 1} ({prompt.kind}{'+' if prompt.positive else '-'})"
            mask = None if prompt.mask is None else _mask_file(prompt, case, what)
            call = session_prompt(prompt, shape=shape, lps_from_voxel=lps, scribble_thickness=caps.scribble_thickness,
                                  mask=mask, what=what)
            _check_kind(call, caps, what, request.interactive_model)
            calls.append(call)
        out.append((lp.label, calls))
    return out


def _mask_file(prompt: Prompt, case: _Case, what: str) -> np.ndarray:
    path = Path(prompt.mask)  # type: ignore[arg-type]
    if not path.is_file():
        raise FileNotFoundError(f"{what}: mask file {path} does not exist")
    array, geometry = case.io.read_seg(path)
    return _on_grid(array, geometry, case, path)


def _check_kind(call: SessionPrompt, caps: Capabilities, what: str, folder: PathLike) -> None:
    kind = {"point": "points", "scribble": "scribble", "lasso": "lasso"}.get(call.kind)
    if call.kind == "box":
        kind = "bbox2d" if any(hi - lo == 1 for lo, hi in call.bbox or ()) and caps.is_supported("bbox2d") else "bbox3d"
    if not caps.is_supported(str(kind)):
        raise ValueError(f"{what}: the interactive model {folder} does not take {kind} prompts (its "
                         f"inference_info.json); supported: {[k for k, v in caps.supported.items() if v]}")


def _automatic_segmentation(model: PathLike, files: Sequence[PathLike], options: PredictOptions,
                           case: _Case) -> np.ndarray:
    """The model's label map of the case ``(i, j, k)``, predicted by :func:`nnseg.predictions.request.run_prediction`
    into a temporary folder (exactly what ``nnUNetv2_predict`` writes) and read back on the image's grid."""
    from nnseg.predictions.request import PredictRequest, run_prediction

    with tempfile.TemporaryDirectory(prefix="nnseg-refine-") as tmp:
        report = run_prediction(PredictRequest(model=model, files=[list(files)], output=tmp, options=options,
                                               num_readers=0, num_writers=0, progress=False))
        if len(report.written) != 1:
            raise RuntimeError(f"the automatic model wrote {len(report.written)} files for one case; expected one")
        return _labels_on_grid(report.written[0], case)


def refine_labels(session: InteractiveSession, image: np.ndarray, seed: np.ndarray,
                  prompts: Sequence[tuple[int, Sequence[SessionPrompt]]], *, refine_seed: bool) -> np.ndarray:
    """Each label in turn: the current map's mask of the label as the initial mask, then its prompts; the result
    replaces the label (it also takes the voxels of other labels it now covers). Pure over arrays ``(i, j, k)``."""
    wide = max((label for label, _ in prompts), default=0) > np.iinfo(seed.dtype).max
    labels = seed.astype(np.uint16) if wide else seed.copy()
    session.set_image(image)
    for label, calls in prompts:
        target = np.zeros(labels.shape, dtype=np.uint8)
        session.set_target_buffer(target)
        session.add_initial_seg_interaction((labels == label).astype(np.uint8), run_prediction=refine_seed)
        for call in calls:
            apply_prompt(session, call)
        labels[labels == label] = 0
        labels[target != 0] = label
    return labels


def apply_prompt(session: InteractiveSession, call: SessionPrompt) -> None:
    """One prompt, predicted (a click in a viewer)."""
    if call.kind == "point":
        session.add_point_interaction(list(call.coordinates or ()), include_interaction=call.positive)
    elif call.kind == "box":
        session.add_bbox_interaction([list(b) for b in call.bbox or ()], include_interaction=call.positive)
    else:
        add = session.add_scribble_interaction if call.kind == "scribble" else session.add_lasso_interaction
        add(call.mask, include_interaction=call.positive, interaction_bbox=[list(b) for b in call.bbox or ()])


def _write(labels_ijk: np.ndarray, path: PathLike, case: _Case) -> None:
    case.io.write_seg(np.ascontiguousarray(labels_ijk.transpose(2, 1, 0)), path, case.geometry)


def _check_channels(request: RefineRequest, model: InteractiveModel, channels: int) -> None:
    if model.num_image_channels != channels:
        raise ValueError(f"the interactive model {request.interactive_model} takes {model.num_image_channels} image "
                         f"channel(s), the image has {channels} ({list(map(str, request.image))}); give the channels "
                         "the model was trained on")


def _checked_case(request: RefineRequest, model: InteractiveModel, files: Sequence[Path]) -> _Case:
    """The case read, after its memory check: from the files' headers before reading, else (a header that leaves the
    shape open) right after reading (:mod:`nnseg.interactive.refine.memory`)."""
    io = _case_io(files)
    _check_output_ending(io, request.output, request.save_automatic)
    shape = header_shape(files, io)
    if shape is not None:
        _check_channels(request, model, shape[0])
        check_refine_memory(model, shape, max_memory_gb=request.max_memory_gb, image_read=False)
    case = _read_case(files, io)
    _check_channels(request, model, case.image.shape[0])
    if shape is None:
        check_refine_memory(model, case.image.shape, max_memory_gb=request.max_memory_gb, image_read=True)
    return case


def _predict_options(request: RefineRequest) -> PredictOptions:
    """The automatic model's options, with the refinement's ``--max-memory`` unless they set their own budget."""
    options = request.predict_options
    if options.max_memory_gb is None and request.max_memory_gb is not None:
        return replace(options, max_memory_gb=request.max_memory_gb)
    return options


def run_refinement(request: RefineRequest) -> RefineResult:
    """Check everything, seed (a file, or the automatic model's prediction), refine each label, write the map.

    Raises:
        FileNotFoundError / ValueError: a bad input, named with its flag and the fix; nothing is written.
        CaseDoesNotFit (a ValueError): the session does not fit the memory budget (``max_memory_gb``); refused before
            the image's voxels are read (from the files' headers) and before anything is written.
    """
    _check_request(request)
    request = replace(request, labels=[replace(lp, label=v) for lp, v in zip(request.labels, _label_values(request))])
    files = case_files(request.image)
    model = load_interactive_model(request.interactive_model, fold=request.interactive_fold, device=request.device)
    case = _checked_case(request, model, files)
    prompts = _session_prompts(request, case, model.capabilities)
    seed = None if request.segmentation is None else _labels_on_grid(Path(request.segmentation), case)
    # memory checked above with the refinement's budget: the session does not check again
    session = InteractiveSession(model, precision=request.precision, do_autozoom=request.do_autozoom,
                                 enable_undo=False, check_memory=False)
    start = time.perf_counter()
    if seed is None:
        seed = _automatic_segmentation(request.model, files, _predict_options(request), case)  # type: ignore[arg-type]
    automatic_s = time.perf_counter() - start if request.model is not None else 0.0
    start = time.perf_counter()
    refined = refine_labels(session, case.image, seed, prompts, refine_seed=request.refine_seed)
    interactive_s = time.perf_counter() - start
    if request.save_automatic is not None:
        _write(seed, request.save_automatic, case)
    _write(refined, request.output, case)
    changed = {label: int(((seed == label) != (refined == label)).sum()) for label, _ in prompts}
    return RefineResult(output=Path(request.output), changed_voxels=changed, automatic_s=automatic_s,
                        interactive_s=interactive_s)
