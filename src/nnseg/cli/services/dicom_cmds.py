"""``nnseg convert-dicom``: a raw dataset from DICOM image series plus DICOM SEG (or NIfTI) labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnseg.cli.context import Context


def add_convert_dicom(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", required=True, help="DICOM images: a folder (nested, any names, DICOMDIR) or zip; SEGs in it "
                   "are used as labels")
    p.add_argument("-d", type=int, required=True, help="new dataset id (1..999)")
    p.add_argument("-n", required=True, help="dataset name (letters, digits, '-'): nnUNet_raw/DatasetXXX_<name>")
    p.add_argument("-l", "--labels", default=None, help="folder/zip with SEG files, or <SeriesInstanceUID>.nii.gz labels")
    p.add_argument("--labels-json", default=None, help="JSON {\"background\": 0, name: value} for NIfTI labels")


def run_convert_dicom(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.raw.dicom.convert import convert_dicom

    roots = ctx.roots()
    out = convert_dicom(ctx.cwd / Path(args.i), roots.raw, dataset_id=args.d, name=args.n,
                        labels=None if args.labels is None else ctx.cwd / Path(args.labels),
                        labels_json=None if args.labels_json is None else ctx.cwd / Path(args.labels_json),
                        other_roots=[roots.preprocessed, roots.results])
    print(f"converted {args.i} -> {out}")
    return 0
