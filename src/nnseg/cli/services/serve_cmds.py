"""``nnseg serve`` (warm inference server, MONAI Label API subset) and ``nnseg export-onnx``."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnseg.cli.context import Context
from nnseg.predictions.inference.defaults import DEFAULT_FOLDS


def add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=[],
                   help="model folders (DatasetX/<Trainer>__<Plans>__<config>), or NAME=FOLDER to choose the name "
                        "[name: <DatasetName>_<config>]")
    add_interactive_serve(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on [127.0.0.1]; any other needs a token")
    p.add_argument("--port", type=int, default=8000, help="port [8000; 0: any free port, printed]")
    p.add_argument("--token", default=None,
                   help="bearer token clients must send [$NNSEG_SERVE_TOKEN, better: a command line is visible to other users; "
                        "required unless --host is loopback]")
    p.add_argument("-f", nargs="+", default=list(DEFAULT_FOLDS), help="folds to use, or 'all' [0 1 2 3 4]")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name [checkpoint_final.pth]")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch [0.5]")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("-device", nargs="+", default=None,
                   help="devices, one worker each (e.g. cuda:0 cuda:1) [cuda if available, else cpu]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--tile_batch_size", type=int, default=None, help="tiles per network call")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="torch, or onnxruntime with the files `nnseg export-onnx` wrote [torch]")
    p.add_argument("--max-memory", "--max_memory", dest="max_memory", type=float, default=None, metavar="GB",
                   help="memory budget of the server, shared by its workers; each case is planned as nnseg predict "
                        "--max-memory plans it: a case whose one-shot path does not fit is predicted in bounded memory, "
                        "one that cannot fit even so is refused before it is queued (413); a case that fits but not "
                        "beside the running ones waits [85 %% of the memory free once the models are loaded]")
    p.add_argument("--max_upload_mb", type=float, default=512.0, help="largest request body in MiB [512]")
    p.add_argument("--max_queued", type=int, default=16, help="jobs that may wait; more are answered 429 [16]")
    p.add_argument("--result_ttl_s", type=float, default=600.0, help="seconds a finished job's result is kept [600]")
    p.add_argument("--max_unzipped_mb", type=float, default=None,
                   help="MiB that uploaded DICOM zips may hold unpacked at once, all jobs together; more: 429 "
                        "[16 x --max_upload_mb]")
    p.add_argument("--request_timeout_s", type=float, default=20.0,
                   help="seconds a client has to send its request headers, and its body (then at >= 16 KiB/s) [20]")
    p.add_argument("--allowed_host", nargs="+", default=[], metavar="NAME",
                   help="Host names accepted besides localhost/127.0.0.1/::1 by a server without a token (DNS "
                        "rebinding guard)")
    p.add_argument("--allowed_origin", nargs="+", default=[], metavar="ORIGIN",
                   help="web app origins (e.g. https://viewer.example:443) allowed to send POST/PUT/DELETE; others "
                        "are refused (403)")
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def add_interactive_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interactive", default=None, metavar="MODEL_FOLDER",
                   help="also serve this nnInteractive model folder with nnInteractive's protocol (nninteractive-client, "
                        "SlicerNNInteractive, napari): docs/INTERACTIVE.md")
    p.add_argument("--interactive_fold", default=None, help="fold of the interactive model [its only fold_*]")
    p.add_argument("--interactive_max_sessions", type=int, default=1, help="interactive clients at once [1]")
    p.add_argument("--interactive_idle_timeout_s", type=float, default=600.0,
                   help="an interactive session without user actions for this long is closed [600]")
    p.add_argument("--interactive_liveness_timeout_s", type=float, default=60.0,
                   help="an interactive session whose client sent nothing (not even a heartbeat) for this long is "
                        "closed [60]")
    p.add_argument("--interactive_no_autozoom", action="store_true", help="start sessions with AutoZoom off")
    p.add_argument("--interactive_no_undo", action="store_true", help="keep no undo pre-images (less memory)")


def run_serve(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.serve.auth import TOKEN_ENV
    from nnseg.serve.automatic.models import ModelOptions
    from nnseg.serve.server import ServerOptions, serve

    options = ModelOptions(folds=tuple(args.f), checkpoint=args.chk, precision=args.precision,
                           step_size=args.step_size, use_tta=not args.disable_tta, tile_batch_size=args.tile_batch_size,
                           backend=args.backend, max_memory_gb=args.max_memory)
    limits = ServerOptions(max_upload_mb=args.max_upload_mb, max_queued=args.max_queued,
                           result_ttl_s=args.result_ttl_s, log_level=args.log_level,
                           max_unzipped_mb=args.max_unzipped_mb, request_timeout_s=args.request_timeout_s,
                           allowed_hosts=tuple(h.lower() for h in args.allowed_host),
                           allowed_origins=tuple(args.allowed_origin))
    token = args.token or ctx.env.get(TOKEN_ENV) or None
    interactive = None
    if args.interactive is not None:
        from nnseg.serve.interactive.sessions import InteractiveOptions

        interactive = InteractiveOptions(
            folder=args.interactive, fold=args.interactive_fold, max_sessions=args.interactive_max_sessions,
            idle_timeout_s=args.interactive_idle_timeout_s, liveness_timeout_s=args.interactive_liveness_timeout_s,
            do_autozoom=not args.interactive_no_autozoom, enable_undo=not args.interactive_no_undo,
            precision=args.precision)
    serve(args.models, host=args.host, port=args.port, token=token, devices=args.device, options=options, limits=limits,
          interactive=interactive)
    return 0


def add_export_onnx(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", required=True, help="model folder (DatasetX/<Trainer>__<Plans>__<config>)")
    p.add_argument("-f", nargs="+", default=list(DEFAULT_FOLDS), help="folds to export, or 'all' [0 1 2 3 4]")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name [checkpoint_final.pth]")


def run_export_onnx(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.predictions.inference.onnx_backend import export_onnx

    folder = Path(args.m)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (-m)")
    for path in export_onnx(folder, folds=args.f, checkpoint=args.chk):
        print(f"wrote {path}")
    return 0
