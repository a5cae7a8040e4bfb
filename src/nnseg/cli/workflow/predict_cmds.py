"""``nnseg predict`` (= ``nnUNetv2_predict``), ``predict-from-modelfolder``, ``install-model``, ``ensemble``.

nnU-Net's argument names and defaults, plus ``--precision`` and ``--tile_batch_size``. A call in training syntax
(``nnUNetv2_predict 1 2d 0 --npz``) fails with the prediction command it most likely meant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from nnseg.cli.context import Context
from nnseg.predictions.inference.defaults import DEFAULT_FOLDS

# training-only options that have no meaning for prediction (dropped from the suggested command)
_TRAIN_ONLY = {"--c": 0, "--val": 0, "--val_best": 0, "--disable_checkpointing": 0, "-num_gpus": 1, "-pretrained_weights": 1}


def suggest_predict_command(prog: str, argv: Sequence[str]) -> str | None:
    """The ``predict`` call a training-style argv (``DATASET CONFIG FOLD ... --npz``) most likely meant, or None."""
    argv = list(argv)
    positionals = []
    while argv and not argv[0].startswith("-"):
        positionals.append(argv.pop(0))
    if not positionals:
        return None
    words = [prog, "-i", "IMAGES", "-o", "OUT", "-d", positionals[0]]
    if len(positionals) > 1:
        words += ["-c", positionals[1]]
    if len(positionals) > 2:
        words += ["-f", *positionals[2:]]
    rest: list[str] = []
    skip = 0
    for word in argv:
        if skip:
            skip -= 1
        elif word in _TRAIN_ONLY:
            skip = _TRAIN_ONLY[word]
        else:
            rest.append("--save_probabilities" if word == "--npz" else word)
    return " ".join(words + rest)


class _PredictParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors show the prediction command a training-style call most likely meant."""

    _nnseg_argv: list[str]

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self._nnseg_argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hint = suggest_predict_command(self.prog, getattr(self, "_nnseg_argv", []))
        if hint:
            message += ("\nnnUNetv2_predict takes named arguments (the positional DATASET CONFIGURATION FOLD form is "
                        f"nnUNetv2_train's). Did you mean:\n  {hint}")
        super().error(message)


def _io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", default=None, help="input folder (CASE_0000<ending>, CASE_0001<ending>, ... per case), or DICOM: "
                   "a folder (any names, nested, DICOMDIR) or zip, one case per series [required unless --dicomweb]")
    p.add_argument("-o", required=True, help="output folder (created)")


def _common_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", nargs="+", default=list(DEFAULT_FOLDS), help="folds to use, or 'all' [0 1 2 3 4]")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch [0.5]")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (~8x faster in 3D)")
    p.add_argument("--verbose", action="store_true", help="print a timing line per case")
    p.add_argument("--save_probabilities", action="store_true",
                   help="also write CASE.npz + CASE.pkl (for ensembling). Costs K x voxels x 4 bytes of deflate per "
                        "case, compressed on every core: a 118-class 512x512x400 CT gives 50 GB of float32, ~41 GB "
                        "on disk (plus ~9 GB of temporary disk) and ~4 more minutes on 2 CPU cores; large cases are "
                        "streamed into the file (bounded RAM), small ones held in memory")
    p.add_argument("--continue_prediction", "--c", action="store_true", help="skip cases whose outputs exist")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name [checkpoint_final.pth]")
    p.add_argument("-prev_stage_predictions", default=None, help="previous stage's predictions (cascade)")
    p.add_argument("-device", default=None,
                   help="cuda, cpu, mps or auto [auto, as for training: cuda if available, else mps, else cpu (with a "
                        "note; nnU-Net's default is cuda)]")
    p.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    p.add_argument("--not_on_device", action="store_true", help="accumulate logits in CPU memory (large images)")
    g = p.add_argument_group("nnseg additions")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision [auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32]")
    g.add_argument("--tile_batch_size", type=int, default=None,
                   help="tiles per network call [as many as fit a quarter of the memory budget, at most 8 samples: "
                        "8 without TTA, 1 with 3D TTA (8 mirrored copies)]")
    g.add_argument("--max-memory", "--max_memory", dest="max_memory", type=float, default=None, metavar="GB",
                   help="memory budget in GB (RAM; free GPU memory on CUDA) [85%% of the free memory]: larger cases "
                        "are predicted and exported slab by slab, a case that cannot fit is refused before any work")
    g.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT|FILE.json",
                   help="predict one case per task on a Dask cluster (pip install nnseg[dask]); -npp/-nps are ignored")
    g.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="run the networks in torch, or in onnxruntime from the files `nnseg export-onnx` wrote [torch]")
    _dicom_args(p)


def _dicom_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DICOM (pip install nnseg[dicom])")
    g.add_argument("--output-format", default="nifti", choices=["nifti", "dicom-seg"],
                   help="nifti: the model's file ending (default); dicom-seg: one DICOM SEG per series (DICOM input)")
    g.add_argument("--seg-codes", default=None, help="JSON file: label name -> {category, type} SNOMED-CT codes")
    g.add_argument("--dicomweb", default=None, metavar="URL", help="DICOMweb root: retrieve --study, store SEGs back")
    g.add_argument("--study", default=None, help="StudyInstanceUID to segment (with --dicomweb)")
    g.add_argument("--series", nargs="+", default=None, help="only these SeriesInstanceUIDs (with --dicomweb)")
    g.add_argument("--token", default=None, help="bearer token for the DICOMweb server")
    g.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value' (repeatable; "
                   "like --token, never sent on to another origin when the server redirects)")
    g.add_argument("--dicomweb-timeout", type=float, default=600.0, metavar="S",
                   help="total deadline of each DICOMweb request in seconds, whatever the server sends [600]")
    g.add_argument("--dicomweb-max-instance-mb", type=float, default=1024.0, metavar="MB",
                   help="refuse a retrieved instance larger than this [1024]")
    g.add_argument("--dicomweb-max-series-gb", type=float, default=16.0, metavar="GB",
                   help="refuse a retrieved series larger than this (streamed to a temporary folder) [16]")


def add_predict(p: argparse.ArgumentParser) -> None:
    p.__class__ = _PredictParser
    _io_args(p)
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier [nnUNetPlans]")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer name [nnUNetTrainer]")
    p.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    _common_predict_args(p)
    p.add_argument("-npp", type=int, default=None, help="background reader threads [3 or $nnUNet_npp; 0: sequential]")
    p.add_argument("-nps", type=int, default=None, help="background writer threads [3 or $nnUNet_nps; 0: sequential]")
    p.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts [1]")
    p.add_argument("-part_id", type=int, default=0, help="which part this call predicts (0-based) [0]")


def _device(requested: str | None) -> str:
    """``-device`` as given; left out or ``auto``: the training rule (CUDA, then MPS, then CPU), with a note off CUDA."""
    if requested in (None, "auto"):
        from nnseg.devices import auto_device

        device = auto_device()
        if device != "cuda":
            print(f"nnseg: no CUDA GPU found; predicting on {device} (pass -device {device} to silence this)",
                  file=sys.stderr)
        return device
    return requested


def _request(args: argparse.Namespace, model_folder: Path, *, npp: int, nps: int, num_parts: int, part_id: int) -> Any:
    """The :class:`~nnseg.predictions.request.PredictRequest` of a ``predict`` command line (checked by the library)."""
    from nnseg.predictions.inference.options import PredictOptions
    from nnseg.predictions.request import DicomWebSource, PredictRequest

    device = args.device if args.cluster else _device(args.device)
    options = PredictOptions(folds=args.f, checkpoint=args.chk, device=device, precision=args.precision,
                             step_size=args.step_size, use_tta=not args.disable_tta,
                             tile_batch_size=args.tile_batch_size, accumulate_on_device=not args.not_on_device,
                             backend=args.backend, max_memory_gb=args.max_memory)
    web = None
    if args.dicomweb is not None:
        from nnseg.predictions.dicom.dicomweb import auth_headers
        from nnseg.predictions.dicom.dicomweb_multipart import DicomWebLimits

        limits = DicomWebLimits.from_user(timeout_s=args.dicomweb_timeout, max_instance_mb=args.dicomweb_max_instance_mb,
                                          max_series_gb=args.dicomweb_max_series_gb)
        web = DicomWebSource(args.dicomweb, args.study, None if args.series is None else tuple(args.series),
                             auth_headers(token=args.token, headers=args.header), limits)
    return PredictRequest(model=model_folder, input_folder=None if web is not None else args.i, dicomweb=web,
                          output=Path(args.o), options=options, output_format=args.output_format,
                          seg_codes=args.seg_codes, save_probabilities=args.save_probabilities,
                          continue_prediction=args.continue_prediction, num_parts=num_parts, part_id=part_id,
                          prev_stage_predictions=args.prev_stage_predictions, num_readers=npp, num_writers=nps,
                          verbose=args.verbose, progress=not args.disable_progress_bar)


def _run(args: argparse.Namespace, model_folder: Path, *, npp: int, nps: int, num_parts: int = 1, part_id: int = 0) -> int:
    request = _request(args, model_folder, npp=npp, nps=nps, num_parts=num_parts, part_id=part_id)
    if args.cluster:
        from nnseg.cluster.predict import predict_on_cluster

        report = predict_on_cluster(args.cluster, request)
        skipped = f", {len(report.skipped)} already done" if report.skipped else ""
        print(f"predicted {len(report.written)} case(s) into {args.o} on the cluster in {report.wall_s:.1f} s{skipped}",
              file=sys.stderr)
        return 0
    from nnseg.predictions.request import run_prediction

    result = run_prediction(request)
    if request.kind == "dicomweb":
        refused = f", {len(result.refused)} refused: {sorted(result.refused)}" if result.refused else ""
        print(f"stored {len(result.stored)} SEG(s), {len(result.skipped)} series skipped{refused}", file=sys.stderr)
        return 1 if result.refused else 0
    what = "DICOM series" if request.kind == "dicom" else "case(s)"
    skipped = f", {len(result.skipped)} already done" if result.skipped else ""
    print(f"predicted {len(result.written)} {what} into {args.o} in {result.wall_s:.1f} s{skipped}", file=sys.stderr)
    return 0


def run_predict(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.predictions.inference.model_folder import resolve_model_folder

    dataset = ctx.dataset_name(args.d)
    folder = resolve_model_folder(ctx.roots().results, dataset, trainer=args.tr, plans_identifier=args.p,
                                  configuration=args.c)
    npp = args.npp if args.npp is not None else ctx.env_int("nnUNet_npp", 3)
    nps = args.nps if args.nps is not None else ctx.env_int("nnUNet_nps", 3)
    return _run(args, folder, npp=npp, nps=nps, num_parts=args.num_parts, part_id=args.part_id)


def add_predict_from_modelfolder(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    p.add_argument("-m", required=True, help="model folder (DatasetX/<Trainer>__<Plans>__<config>)")
    _common_predict_args(p)
    p.add_argument("-npp", type=int, default=3, help="background reader threads [3]")
    p.add_argument("-nps", type=int, default=3, help="background writer threads [3]")


def run_predict_from_modelfolder(args: argparse.Namespace, ctx: Context) -> int:
    folder = Path(args.m)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (-m)")
    return _run(args, folder, npp=args.npp, nps=args.nps)


def add_install_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("zip", help="model zip written by nnUNetv2_export_model_to_zip")
    add_zip_limit_options(p)


def add_zip_limit_options(p: argparse.ArgumentParser) -> None:
    """``--max-unzipped-gb`` and ``--max-zip-ratio`` (nnseg extras; see nnseg.sharing.zip_limits)."""
    p.add_argument("--max-unzipped-gb", type=float, default=None, help="nnseg extra: refuse a zip that unpacks to more "
                   "GiB than this [$NNSEG_MODEL_ZIP_MAX_GB or 16]")
    p.add_argument("--max-zip-ratio", type=float, default=None, help="nnseg extra: refuse a zip that compresses better "
                   "than this ratio (zip bomb) [$NNSEG_MODEL_ZIP_MAX_RATIO or 200]")


def zip_limits(args: argparse.Namespace, ctx: Context) -> Any:
    from nnseg.sharing.zip_limits import ZipLimits

    return ZipLimits.from_settings(max_gb=args.max_unzipped_gb, max_ratio=args.max_zip_ratio, env=ctx.env)


def run_install_model(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.sharing.install import install_model_zip

    installed = install_model_zip(Path(args.zip), ctx.roots().results, limits=zip_limits(args, ctx))
    for folder in installed:
        print(f"installed {folder}")
    return 0


def add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", nargs="+", required=True, help="prediction folders with CASE.npz + CASE.pkl (at least two)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-np", type=int, default=None, help="worker threads [8 or $nnUNet_def_n_proc]")
    p.add_argument("--save_npz", action="store_true", help="also write the averaged probabilities")


def run_ensemble(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.predictions.export.from_logits import ensemble_folders

    num = args.np if args.np is not None else ctx.env_int("nnUNet_def_n_proc", 8)
    done = ensemble_folders(args.i, args.o, save_npz=args.save_npz, num_processes=num)
    print(f"ensembled {len(done)} case(s) from {len(args.i)} folders into {args.o}")
    return 0
