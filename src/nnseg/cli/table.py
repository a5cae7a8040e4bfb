"""The table of commands: nnseg subcommand name, nnU-Net v2 console-script alias, module that implements it.

The module ``nnseg.cli.<module>`` (``workflow.*`` for nnU-Net v2's steps, ``services.*`` for what nnU-Net lacks)
implements command ``some-name`` with two functions:
``add_some_name(parser: argparse.ArgumentParser) -> None`` and ``run_some_name(args, ctx: Context) -> int``.
Only commands that are fully implemented are listed here; ``pyproject.toml`` lists the same scripts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    script: str | None
    module: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("train", "nnUNetv2_train", "workflow.train_cmds", "train one fold of a configuration (nnU-Net's recipe; --epochs, --seed, ...)"),
    Command("demo", None, "services.demo_cmd", "run the whole workflow on generated data (data, plan, train, select, predict, evaluate)"),
    Command("fingerprint", "nnUNetv2_extract_fingerprint", "workflow.plan_cmds", "extract the dataset fingerprint (dataset_fingerprint.json) from nnUNet_raw"),
    Command("plan", "nnUNetv2_plan_experiment", "workflow.plan_cmds", "plan configurations from the fingerprint (writes nnUNet_preprocessed/DatasetX/<plans>.json)"),
    Command("preprocess", "nnUNetv2_preprocess", "workflow.plan_cmds", "preprocess the training cases of each configuration (resumable; blosc2 .b2nd files)"),
    Command("plan-and-preprocess", "nnUNetv2_plan_and_preprocess", "workflow.plan_cmds", "fingerprint, plan and preprocess in one go (what you run on a new dataset)"),
    Command("move-plans", "nnUNetv2_move_plans_between_datasets", "workflow.plan_cmds", "copy a plans file to another dataset (for pretraining / fine-tuning)"),
    Command("paths", None, "services.paths_cmd", "print the raw/preprocessed/results folders and where each came from"),
    Command("convert-msd", "nnUNetv2_convert_MSD_dataset", "workflow.raw_cmds", "convert an MSD TaskXX_Name folder to nnUNet_raw/DatasetXXX_Name"),
    Command("convert-old", "nnUNetv2_convert_old_nnUNet_dataset", "workflow.raw_cmds", "convert an nnU-Net v1 raw dataset to the v2 format"),
    Command("convert-dicom", None, "services.dicom_cmds", "build nnUNet_raw/DatasetXXX_Name from DICOM image series and DICOM SEG (or NIfTI) labels"),
    Command("verify", None, "workflow.raw_cmds", "check a raw dataset and report every problem (exit code 1 on errors)"),
    Command("demo-data", None, "workflow.raw_cmds", "write a small synthetic dataset in raw format (for trying nnseg out)"),
    Command("evaluate", "nnUNetv2_evaluate_folder", "workflow.metrics_cmds", "evaluate predictions against references (labels from dataset.json); writes summary.json"),
    Command("evaluate-simple", "nnUNetv2_evaluate_simple", "workflow.metrics_cmds", "evaluate predictions against references for the given labels; writes summary.json"),
    Command("predict", "nnUNetv2_predict", "workflow.predict_cmds", "predict a folder of images with a trained model (-d -c -tr -f as nnU-Net)"),
    Command("predict-from-modelfolder", "nnUNetv2_predict_from_modelfolder", "workflow.predict_cmds", "predict a folder of images with the model in a given folder (-m)"),
    Command("install-model", "nnUNetv2_install_pretrained_model_from_zip", "workflow.predict_cmds", "install a model zip into nnUNet_results (unsafe entries refused)"),
    Command("ensemble", "nnUNetv2_ensemble", "workflow.predict_cmds", "average the probabilities of several prediction folders and write segmentations"),
    Command("export-model", "nnUNetv2_export_model_to_zip", "workflow.share_cmds", "write trained models (folds, checkpoints, cross-validation results) to a zip for sharing"),
    Command("download-model", "nnUNetv2_download_pretrained_model_by_url", "workflow.share_cmds", "download a model zip by URL (resumable, optional --sha256) and install it"),
    Command("plot-overlay", "nnUNetv2_plot_overlay_pngs", "workflow.share_cmds", "write one PNG per training case: the slice with most foreground, labels overlaid in colour"),
    Command("report", None, "services.report_cmds", "write a self-contained HTML page per trained model: progress, validation Dice table and box plot, worst cases"),
    Command("find-best", "nnUNetv2_find_best_configuration", "workflow.select_cmds", "pick the best configuration or ensemble by cross-validation Dice; write inference instructions"),
    Command("accumulate-cv", "nnUNetv2_accumulate_crossval_results", "workflow.select_cmds", "collect all folds' validation predictions of a model into one folder and evaluate them"),
    Command("determine-pp", "nnUNetv2_determine_postprocessing", "workflow.select_cmds", "choose largest-component postprocessing on cross-validation predictions (writes postprocessing.json/.pkl)"),
    Command("cross-validate", None, "services.cluster_cmds", "train every fold of the given configurations (one Dask task per fold with --cluster), then find-best"),
    Command("serve", None, "services.serve_cmds", "serve models warm over HTTP (REST API + the MONAI Label API 3D Slicer uses); token, limits, job queue"),
    Command("refine", None, "services.refine_cmds", "correct an automatic segmentation (a file, or a model run first) with clicks, boxes, scribbles of an interactive model"),
    Command("export-onnx", None, "services.serve_cmds", "write each fold's network as ONNX (fold_k/checkpoint_final.onnx) for --backend onnxruntime"),
    Command("apply-pp", "nnUNetv2_apply_postprocessing", "workflow.select_cmds", "apply postprocessing.json / postprocessing.pkl to a folder of predictions"),
)


def by_name() -> dict[str, Command]:
    return {c.name: c for c in COMMANDS}


def by_script() -> dict[str, Command]:
    return {c.script: c for c in COMMANDS if c.script}
