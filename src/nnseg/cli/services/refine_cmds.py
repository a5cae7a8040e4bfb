"""``nnseg refine``: correct an automatic segmentation with a few clicks of an interactive (nnInteractive) model.

Parses the arguments and calls :func:`nnseg.interactive.refine.run_refinement`; the prompts format is in
docs/INTERACTIVE.md ("Refining an automatic segmentation").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nnseg.cli.context import Context
from nnseg.predictions.inference.defaults import DEFAULT_FOLDS

EPILOG = """examples:
  # refine label 1 of an existing segmentation with one click and one negative click (voxel i,j,k of the image)
  nnseg refine -i case_0000.nii.gz --seg case.nii.gz --interactive MODEL --label 1 \\
      --point 40,52,30 --negative-point 44,50,30 -o case_refined.nii.gz
  # run the automatic 3d_fullres model of dataset 4 first, then apply the corrections of a prompts file
  nnseg refine -i case_0000.nii.gz -d 4 -c 3d_fullres -f 0 --interactive MODEL --prompts clicks.json -o out.nii.gz
"""


class _OrderedPrompt(argparse.Action):
    """Collects --point/--negative-point/--box/--negative-box in the order given (the session applies them so)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        kind, positive = self.const
        prompts = list(getattr(namespace, "flag_prompts", None) or [])
        prompts.append((kind, positive, str(values)))
        namespace.flag_prompts = prompts


def _prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corrections (applied in the order given)")
    g.add_argument("--label", default=None, help="the label the --point/--box flags correct (a value, e.g. 1)")
    for flag, kind, positive, what in (("--point", "point", True, "x,y,z: a voxel the label should include"),
                                       ("--negative-point", "point", False, "x,y,z: a voxel the label should leave out"),
                                       ("--box", "box", True, "x0,y0,z0,x1,y1,z1: opposite corners (inclusive) of a "
                                        "box around the object (one coordinate equal: a 2D box on that slice)"),
                                       ("--negative-box", "box", False, "x0,y0,z0,x1,y1,z1: a box to leave out")):
        g.add_argument(flag, action=_OrderedPrompt, const=(kind, positive), dest="flag_prompts", metavar="COORDS",
                       help=f"{what} (repeatable)")
    g.add_argument("--space", default="voxel", choices=["voxel", "ras", "lps"],
                   help="coordinates of the flags: voxel indices i,j,k of the image file, or world mm in RAS (3D "
                        "Slicer, ITK-SNAP) or LPS (DICOM, ITK) [voxel]")
    g.add_argument("--prompts", default=None, metavar="FILE.json",
                   help="corrections of one or more labels: points, boxes, scribbles, lassos (docs/INTERACTIVE.md)")
    g.add_argument("--refine-seed", action="store_true",
                   help="let the interactive model refine each seeded label as a whole before the corrections")


def _seed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to refine (one of)")
    g.add_argument("--seg", default=None, metavar="FILE", help="an existing label map on the image's grid")
    g.add_argument("-m", default=None, metavar="MODEL_FOLDER", help="an nnU-Net/nnseg model folder to run first")
    g.add_argument("-d", default=None, help="dataset of the automatic model to run first (with -c, -tr, -p)")
    g.add_argument("-c", default=None, help="configuration of the automatic model, e.g. 3d_fullres")
    g.add_argument("-tr", default="nnUNetTrainer", help="trainer of the automatic model [nnUNetTrainer]")
    g.add_argument("-p", default="nnUNetPlans", help="plans of the automatic model [nnUNetPlans]")
    g.add_argument("-f", nargs="+", default=list(DEFAULT_FOLDS), help="folds of the automatic model [0 1 2 3 4]")
    g.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint of the automatic model")
    g.add_argument("-step_size", type=float, default=0.5, help="sliding-window step of the automatic model [0.5]")
    g.add_argument("--disable_tta", action="store_true", help="no mirroring when the automatic model runs")
    g.add_argument("--save-automatic", default=None, metavar="FILE", help="also write the automatic segmentation")


def add_refine(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("-i", nargs="+", required=True, metavar="FILE", help="the image: one file per channel "
                   "(CASE_0000.nii.gz CASE_0001.nii.gz ...; NIfTI, NRRD, MHA), or the case name imagesTs/CASE")
    p.add_argument("--interactive", required=True, metavar="MODEL_FOLDER",
                   help="an nnInteractive model folder (inference_info.json, fold_*/checkpoint_final.pth)")
    p.add_argument("-o", required=True, metavar="FILE", help="the refined label map to write (e.g. refined.nii.gz)")
    _seed_args(p)
    _prompt_args(p)
    g = p.add_argument_group("running")
    g.add_argument("--interactive_fold", default=None, help="fold of the interactive model [its only fold_*]")
    g.add_argument("-device", default=None, help="cuda, cpu, mps or auto [auto: cuda if available, else cpu]")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision [auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32]")
    g.add_argument("--no-autozoom", action="store_true", help="never zoom out when the object outgrows the patch")
    g.add_argument("--max-memory", "--max_memory", dest="max_memory", type=float, default=None, metavar="GB",
                   help="memory budget in GB (RAM; free GPU memory on CUDA) [85%% of the free memory]: an image whose "
                        "interactive session cannot fit is refused before its voxels are read or anything is "
                        "written; the automatic model (-d/-c, -m) predicts within it too")


def _model_folder(args: argparse.Namespace, ctx: Context) -> Path | None:
    if args.d is None and args.c is None:
        return None if args.m is None else Path(args.m)
    if args.m is not None or args.d is None or args.c is None:
        raise ValueError("name the automatic model with -d DATASET -c CONFIGURATION (and -tr/-p), or -m MODEL_FOLDER")
    from nnseg.predictions.inference.model_folder import resolve_model_folder

    return resolve_model_folder(ctx.roots().results, ctx.dataset_name(args.d), trainer=args.tr,
                                plans_identifier=args.p, configuration=args.c)


def _labels(args: argparse.Namespace) -> list[Any]:
    from nnseg.interactive.refine import flag_prompt, merge_flag_prompts, parse_label, read_prompts_file

    from_file = [] if args.prompts is None else read_prompts_file(args.prompts)
    flags = [flag_prompt(kind, text, positive=positive, space=args.space)
             for kind, positive, text in (args.flag_prompts or [])]
    label = None if args.label is None else parse_label(args.label, "--label")
    return merge_flag_prompts(from_file, label, flags)


def _device(requested: str | None) -> str:
    if requested in (None, "auto"):
        from nnseg.devices import auto_device

        return auto_device()
    return requested


def run_refine(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.interactive.refine import RefineRequest, run_refinement
    from nnseg.predictions.inference.options import PredictOptions

    device = _device(args.device)
    options = PredictOptions(folds=tuple(args.f), checkpoint=args.chk, device=device, precision=args.precision,
                             step_size=args.step_size, use_tta=not args.disable_tta)
    request = RefineRequest(image=list(args.i), interactive_model=args.interactive, output=args.o,
                            labels=_labels(args), segmentation=args.seg, model=_model_folder(args, ctx),
                            predict_options=options, interactive_fold=args.interactive_fold, device=device,
                            precision=args.precision, do_autozoom=not args.no_autozoom,
                            refine_seed=args.refine_seed, save_automatic=args.save_automatic,
                            max_memory_gb=args.max_memory)
    result = run_refinement(request)
    changed = ", ".join(f"label {k}: {v} voxels changed" for k, v in result.changed_voxels.items())
    auto = f"automatic model {result.automatic_s:.1f} s, " if request.model is not None else ""
    print(f"wrote {result.output} ({changed}; {auto}interactive {result.interactive_s:.1f} s)", file=sys.stderr)
    return 0
