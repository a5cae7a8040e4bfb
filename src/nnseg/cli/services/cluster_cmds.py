"""``nnseg cross-validate -d D -c CONFIGS [-f FOLDS] [--cluster ...]``: every fold of every configuration, then
``nnUNetv2_find_best_configuration``; on a Dask cluster one task per fold (see :mod:`nnseg.cluster.crossval`)."""

from __future__ import annotations

import argparse
import sys

from nnseg.cli.context import Context
from nnseg.cli.workflow.train_cmds import add_recipe_options, recipe


def add_cross_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", nargs="+", required=True, help="configurations, e.g. 2d 3d_fullres")
    p.add_argument("-f", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds [0 1 2 3 4]")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer name [nnUNetTrainer]")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier [nnUNetPlans]")
    p.add_argument("-device", default="auto", help="cuda, cpu or mps, as seen by the workers [auto]")
    p.add_argument("-np", type=int, default=None, help="processes for find-best [8 or $nnUNet_def_n_proc]")
    p.add_argument("--disable_ensembling", action="store_true", help="find-best without ensembles")
    p.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT|FILE.json",
                   help="train one fold per task on a Dask cluster (pip install nnseg[dask]); default: here, in turn")
    add_recipe_options(p)


def run_cross_validate(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.cluster.crossval import CrossValidation, cross_validate
    from nnseg.launch.request import TrainRequest

    trainer, config = recipe(args, ctx)
    name, roots = ctx.dataset_name(args.d), ctx.roots()
    template = TrainRequest(preprocessed_dataset_folder=roots.preprocessed / name,
                            results_dataset_folder=roots.results / name, configuration=args.c[0], fold=args.f[0],
                            trainer_name=trainer, config=config, plans_identifier=args.p, device=args.device,
                            background_batches=ctx.env_int("nnUNet_n_proc_DA", 1) > 0, progress=sys.stderr.isatty())
    cv = CrossValidation(template, configurations=tuple(args.c), folds=tuple(args.f),
                         allow_ensembling=not args.disable_ensembling,
                         num_processes=args.np if args.np is not None else ctx.env_int("nnUNet_def_n_proc", 8),
                         raw_root=roots.raw)
    info = cross_validate(cv, cluster=args.cluster, progress=sys.stderr.isatty())
    best = info["best_model_or_ensemble"]
    print(f"cross-validation done: best {[m['configuration'] for m in best['selected_model_or_models']]} "
          f"(Dice {best['result_on_crossval_pre_pp']:.4f}); instructions in "
          f"{roots.results / name / 'inference_instructions.txt'}")
    return 0
