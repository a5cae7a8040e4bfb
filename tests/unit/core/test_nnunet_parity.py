"""nnU-Net 2.8.1 parity, argument by argument and environment variable by environment variable.

The tables list every argument of every ``nnUNetv2_*`` console script of the nnU-Net 2.8.1 release (read from its
argparse definitions) and every environment variable 2.8.1 reads. Each one is either accepted with the same meaning
(``SAME``, checked against nnseg's parser: the option exists and takes values the same way) or refused, for the
values nnseg cannot honour, with a message saying why (``Refused``: the call in ``argv`` must fail with ``message``).
``Differs`` marks the two variables whose meaning nnseg documents as different (the reason is in the entry).
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnseg.cli.main import build_parser, run_command
from nnseg.cli.table import by_script
from shared_paths import REPO

POSITIONAL, SWITCH, VALUE, LIST = "positional", "switch", "value", "list"
SAME = "same"


@dataclass(frozen=True)
class Refused:
    """Accepted by the parser, but the values nnseg cannot honour are refused; ``argv`` meets the refusal."""

    why: str
    argv: tuple[str, ...]
    message: str
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Differs:
    """Read by nnseg with a documented difference in meaning."""

    why: str


OTHER_TRAINER = Refused("nnU-Net's -tr names a trainer class; nnseg has nnU-Net's default, NoMirroring, NoDA and "
                        "_<N>epochs trainers as presets, plus presets registered by extensions. Others are refused",
                        ("nnUNetv2_train", "1", "3d_fullres", "0", "-tr", "nnUNetTrainerDA5"),
                        "unknown trainer 'nnUNetTrainerDA5'")
FPE = ("only DatasetFingerprintExtractor exists in nnseg (nnU-Net imports the class by name)",
       "unknown fingerprint extractor -fpe 'MyExtractor'")
PL = ("nnseg has nnU-Net's shipped planners as presets except nnUNetPlannerResEncL_noResampling; extensions can add "
      "presets", "unknown experiment planner -pl 'nnUNetPlannerResEncL_noResampling'")
PREPROCESSOR = ("only DefaultPreprocessor exists in nnseg", "unknown -preprocessor_name 'MyPreprocessor'")

ARGUMENTS: dict[str, list[tuple[str, str, object]]] = {
    "nnUNetv2_accumulate_crossval_results": [
        ("dataset_name_or_id", POSITIONAL, SAME), ("-c", VALUE, SAME), ("-o", VALUE, SAME), ("-f", LIST, SAME),
        ("-p", VALUE, SAME), ("-tr", VALUE, SAME),
    ],
    "nnUNetv2_apply_postprocessing": [
        ("-i", VALUE, SAME), ("-o", VALUE, SAME), ("-pp_pkl_file", VALUE, SAME), ("-np", VALUE, SAME),
        ("-plans_json", VALUE, SAME), ("-dataset_json", VALUE, SAME),
    ],
    "nnUNetv2_convert_MSD_dataset": [("-i", VALUE, SAME), ("-overwrite_id", VALUE, SAME), ("-np", VALUE, SAME)],
    "nnUNetv2_convert_old_nnUNet_dataset": [
        ("input_folder", POSITIONAL, SAME), ("output_dataset_name", POSITIONAL, SAME),
    ],
    "nnUNetv2_determine_postprocessing": [
        ("-i", VALUE, SAME), ("-ref", VALUE, SAME), ("-plans_json", VALUE, SAME), ("-dataset_json", VALUE, SAME),
        ("-np", VALUE, SAME), ("--remove_postprocessed", SWITCH, SAME),
    ],
    "nnUNetv2_download_pretrained_model_by_url": [("url", POSITIONAL, SAME)],
    "nnUNetv2_ensemble": [("-i", LIST, SAME), ("-o", VALUE, SAME), ("-np", VALUE, SAME), ("--save_npz", SWITCH, SAME)],
    "nnUNetv2_evaluate_folder": [
        ("gt_folder", POSITIONAL, SAME), ("pred_folder", POSITIONAL, SAME), ("-djfile", VALUE, SAME),
        ("-pfile", VALUE, SAME), ("-o", VALUE, SAME), ("-np", VALUE, SAME), ("--chill", SWITCH, SAME),
    ],
    "nnUNetv2_evaluate_simple": [
        ("gt_folder", POSITIONAL, SAME), ("pred_folder", POSITIONAL, SAME), ("-l", LIST, SAME), ("-il", VALUE, SAME),
        ("-o", VALUE, SAME), ("-np", VALUE, SAME), ("--chill", SWITCH, SAME),
    ],
    "nnUNetv2_export_model_to_zip": [
        ("-d", VALUE, SAME), ("-o", VALUE, SAME), ("-c", LIST, SAME), ("-tr", VALUE, SAME), ("-p", VALUE, SAME),
        ("-f", LIST, SAME), ("-chk", LIST, SAME),
        # 2.8.1 declares it store_false with default False, so there it never changes anything; nnseg does what its
        # help says (allow missing folds/configurations)
        ("--not_strict", SWITCH, SAME), ("--exp_cv_preds", SWITCH, SAME),
    ],
    "nnUNetv2_extract_fingerprint": [
        ("-d", LIST, SAME), ("-fpe", VALUE, Refused(FPE[0], ("nnUNetv2_extract_fingerprint", "-d", "1", "-fpe",
                                                            "MyExtractor"), FPE[1])),
        ("-np", VALUE, SAME), ("--verify_dataset_integrity", SWITCH, SAME), ("--clean", SWITCH, SAME),
        ("--verbose", SWITCH, SAME), ("--no_pbar", SWITCH, SAME),
    ],
    "nnUNetv2_find_best_configuration": [
        ("dataset_name_or_id", POSITIONAL, SAME), ("-p", LIST, SAME), ("-c", LIST, SAME), ("-tr", LIST, SAME),
        ("-np", VALUE, SAME), ("-f", LIST, SAME), ("--disable_ensembling", SWITCH, SAME),
        ("--no_overwrite", SWITCH, SAME),
    ],
    "nnUNetv2_install_pretrained_model_from_zip": [("zip", POSITIONAL, SAME)],
    "nnUNetv2_move_plans_between_datasets": [
        ("-s", VALUE, SAME), ("-t", VALUE, SAME), ("-sp", VALUE, SAME), ("-tp", VALUE, SAME),
    ],
    "nnUNetv2_plan_and_preprocess": [
        ("-d", LIST, SAME),
        ("-fpe", VALUE, Refused(FPE[0], ("nnUNetv2_plan_and_preprocess", "-d", "1", "-fpe", "MyExtractor"), FPE[1])),
        ("-npfp", VALUE, SAME), ("--verify_dataset_integrity", SWITCH, SAME), ("--no_pp", SWITCH, SAME),
        ("--clean", SWITCH, SAME),
        ("-pl", VALUE, Refused(PL[0], ("nnUNetv2_plan_and_preprocess", "-d", "1", "-pl",
                                       "nnUNetPlannerResEncL_noResampling"), PL[1])),
        ("-gpu_memory_target", VALUE, SAME),
        ("-preprocessor_name", VALUE, Refused(PREPROCESSOR[0], ("nnUNetv2_plan_and_preprocess", "-d", "1",
                                                                "-preprocessor_name", "MyPreprocessor"), PREPROCESSOR[1])),
        ("-overwrite_target_spacing", LIST, SAME), ("-overwrite_plans_name", VALUE, SAME), ("-c", LIST, SAME),
        ("-np", LIST, SAME), ("--verbose", SWITCH, SAME), ("--no_pbar", SWITCH, SAME),
    ],
    "nnUNetv2_plan_experiment": [
        ("-d", LIST, SAME),
        ("-pl", VALUE, Refused(PL[0], ("nnUNetv2_plan_experiment", "-d", "1", "-pl",
                                       "nnUNetPlannerResEncL_noResampling"), PL[1])),
        ("-gpu_memory_target", VALUE, SAME),
        ("-preprocessor_name", VALUE, Refused(PREPROCESSOR[0], ("nnUNetv2_plan_experiment", "-d", "1",
                                                                "-preprocessor_name", "MyPreprocessor"), PREPROCESSOR[1])),
        ("-overwrite_target_spacing", LIST, SAME), ("-overwrite_plans_name", VALUE, SAME),
    ],
    "nnUNetv2_plot_overlay_pngs": [
        ("-d", VALUE, SAME), ("-o", VALUE, SAME), ("-np", VALUE, SAME), ("-channel_idx", VALUE, SAME),
        ("--use_raw", SWITCH, SAME), ("-p", VALUE, SAME), ("-c", VALUE, SAME), ("-overlay_intensity", VALUE, SAME),
    ],
    "nnUNetv2_predict": [
        ("-i", VALUE, SAME), ("-o", VALUE, SAME), ("-d", VALUE, SAME), ("-p", VALUE, SAME), ("-tr", VALUE, SAME),
        ("-c", VALUE, SAME), ("-f", LIST, SAME), ("-step_size", VALUE, SAME), ("--disable_tta", SWITCH, SAME),
        ("--verbose", SWITCH, SAME), ("--save_probabilities", SWITCH, SAME), ("--continue_prediction", SWITCH, SAME),
        ("-chk", VALUE, SAME), ("-npp", VALUE, SAME), ("-nps", VALUE, SAME), ("-prev_stage_predictions", VALUE, SAME),
        ("-num_parts", VALUE, SAME), ("-part_id", VALUE, SAME),
        # cuda/cpu/mps mean the same; left out, nnseg uses the training rule (CUDA, then MPS, then CPU) where
        # nnU-Net's default is cuda (which fails without a GPU)
        ("-device", VALUE, SAME), ("--disable_progress_bar", SWITCH, SAME), ("--not_on_device", SWITCH, SAME),
    ],
    "nnUNetv2_predict_from_modelfolder": [
        ("-i", VALUE, SAME), ("-o", VALUE, SAME), ("-m", VALUE, SAME), ("-f", LIST, SAME),
        ("-step_size", VALUE, SAME), ("--disable_tta", SWITCH, SAME), ("--verbose", SWITCH, SAME),
        ("--save_probabilities", SWITCH, SAME), ("--continue_prediction", SWITCH, SAME), ("--c", SWITCH, SAME),
        ("-chk", VALUE, SAME), ("-npp", VALUE, SAME), ("-nps", VALUE, SAME), ("-prev_stage_predictions", VALUE, SAME),
        ("-device", VALUE, SAME), ("--disable_progress_bar", SWITCH, SAME), ("--not_on_device", SWITCH, SAME),
    ],
    "nnUNetv2_preprocess": [
        ("-d", LIST, SAME), ("-plans_name", VALUE, SAME), ("-c", LIST, SAME), ("-np", LIST, SAME),
        ("--verbose", SWITCH, SAME), ("--no_pbar", SWITCH, SAME),
    ],
    "nnUNetv2_train": [
        ("dataset_name_or_id", POSITIONAL, SAME), ("configuration", POSITIONAL, SAME), ("fold", POSITIONAL, SAME),
        ("-tr", VALUE, OTHER_TRAINER), ("-p", VALUE, SAME), ("-pretrained_weights", VALUE, SAME),
        ("-num_gpus", VALUE, SAME),  # also on the CPU (gloo) in nnseg; nnU-Net needs CUDA for DDP
        ("--npz", SWITCH, SAME), ("--c", SWITCH, SAME), ("--val", SWITCH, SAME), ("--val_best", SWITCH, SAME),
        ("--disable_checkpointing", SWITCH, SAME),
        ("-device", VALUE, SAME),  # default auto (CUDA, MPS, CPU) instead of cuda; the values mean the same
    ],
}

ENVIRONMENT: dict[str, object] = {
    "nnUNet_raw": SAME, "nnUNet_preprocessed": SAME, "nnUNet_results": SAME,  # unset: ./nnseg_data, with a note
    "nnUNet_extTrainer": Refused(
        "folders whose .py files are imported (as in nnU-Net); nnseg's files register components, so an nnU-Net "
        "trainer subclass cannot run and is refused, naming the file",
        ("nnUNetv2_train", "1", "3d_fullres", "0"), "subclassing the trainer",
        (("nnUNet_extTrainer", "{ext}"),)),
    "nnUNet_def_n_proc": SAME, "nnUNet_npp": SAME, "nnUNet_nps": SAME,
    "nnUNet_n_proc_DA": Differs("nnseg has no data-augmentation worker processes: batches are made in one background "
                                "thread on accelerators and inline on the CPU; nnUNet_n_proc_DA=0 makes them inline "
                                "everywhere, other values keep nnseg's choice"),
    "nnUNet_compile": Differs("training as nnU-Net (CUDA only; unset or true/1/t compiles, false/0/f does not), but "
                              "nnseg also reads yes/on and no/off and refuses any other value (nnU-Net: off); "
                              "prediction never compiles in nnseg (nnU-Net compiles when it is true)"),
    "nnUNet_wandb_enabled": SAME, "nnUNet_wandb_project": SAME, "nnUNet_wandb_mode": SAME,
    "SLURM_JOB_ID": SAME, "LSB_JOBID": SAME,  # the W&B config's JobID (and an MLflow tag)
    "MASTER_PORT": SAME,  # -num_gpus > 1: the rendezvous port if set, else a free one
}


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    out = {}
    for action in parser._actions:
        for name in action.option_strings or [action.dest]:
            out[name] = action
    return out


def _kind(action: argparse.Action) -> str:
    if not action.option_strings:
        return POSITIONAL
    if action.nargs == 0:
        return SWITCH
    return LIST if action.nargs in ("+", "*") else VALUE


def test_every_nnunet_command_is_an_nnseg_script() -> None:
    assert set(ARGUMENTS) == set(by_script()), "the 21 console scripts of nnU-Net 2.8.1"
    assert sum(len(rows) for rows in ARGUMENTS.values()) == 157


@pytest.mark.parametrize("script", sorted(ARGUMENTS))
def test_every_argument_is_accepted_the_same_way(script: str) -> None:
    actions = _actions(build_parser(by_script()[script], prog=script))
    for flag, kind, status in ARGUMENTS[script]:
        assert flag in actions, f"{script} lacks {flag}"
        assert _kind(actions[flag]) == kind, f"{script} {flag}: {_kind(actions[flag])} instead of {kind}"
        assert status == SAME or isinstance(status, Refused), (script, flag)
        if kind == SWITCH:
            assert isinstance(actions[flag], argparse._StoreTrueAction), f"{script} {flag} is not an on-switch"


REFUSALS = [(f"{script} {flag}", status) for script, rows in ARGUMENTS.items() for flag, _, status in rows
            if isinstance(status, Refused)] + [(name, s) for name, s in ENVIRONMENT.items() if isinstance(s, Refused)]


@pytest.mark.parametrize("what, refusal", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_values_say_why(what: str, refusal: Refused, roots_env: dict[str, str], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "nnunet_trainer_i17.py").write_text("from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n")
    env = {**roots_env, **{k: v.format(ext=ext) for k, v in refusal.env}}
    script, *argv = refusal.argv
    assert run_command(by_script()[script], argv, prog=script, env=env) == 1
    assert refusal.message in capsys.readouterr().err
    assert refusal.why
    assert not [p for k in ("nnUNet_preprocessed", "nnUNet_results") for p in Path(roots_env[k]).iterdir()]  # none written


def _string_constants() -> set[str]:
    found = set()
    for path in (REPO / "src" / "nnseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def test_every_nnunet_environment_variable_is_read_or_refused() -> None:
    constants = _string_constants()
    for name, status in ENVIRONMENT.items():
        assert status == SAME or isinstance(status, (Refused, Differs)), name
        assert name in constants, f"nnseg never reads {name}"
        if isinstance(status, Differs):
            assert status.why
