"""Model selection (``nnUNetv2_find_best_configuration``): pick the best model or pairwise ensemble by
cross-validation Dice, determine its postprocessing and write how to run inference with it.

For each (trainer, configuration, plans) whose configuration is in the plans: collect its cross-validation results
(:func:`nnseg.metrics.crossval.accumulate_crossval_results`); with ensembling allowed, every pair of models is
ensembled on its cross-validation probabilities into ``ensembles/``. The winner has the highest ``foreground_mean``
Dice (ties: the first, so single models win over ensembles); its postprocessing is determined; then
``inference_information.json`` (nnU-Net's structure) and ``inference_instructions.txt`` are written next to the
model folders. Unlike nnU-Net (quirk 1.18.4), the instructions for a cascade include the low-resolution step.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg._types import PathLike
from nnseg.jsonio import load_json, save_json
from nnseg.metrics.crossval import (
    accumulate_crossval_results,
    ensemble_crossvalidations,
    ensemble_name,
    evaluate_folder_like_model,
    reference_folder,
)
from nnseg.metrics.evaluate import DEFAULT_NUM_PROCESSES

DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
DEFAULT_FOLDS = (0, 1, 2, 3, 4)


def instructions_num_processes() -> int:
    """The ``-np`` the instructions suggest: nnU-Net's 8, or fewer on a machine with fewer cores (8 processes on 2
    cores only compete for them)."""
    return max(1, min(DEFAULT_NUM_PROCESSES, os.cpu_count() or 1))


@dataclass(frozen=True)
class ModelId:
    """A trained model: ``nnUNet_results/DatasetX/<trainer>__<plans>__<configuration>``."""

    trainer: str
    plans: str
    configuration: str

    @property
    def identifier(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @classmethod
    def from_identifier(cls, identifier: str) -> ModelId:
        parts = identifier.split("__")
        if len(parts) != 3:
            raise ValueError(f"{identifier!r} is not a model folder name <Trainer>__<Plans>__<configuration>")
        return cls(*parts)

    def to_json(self) -> dict[str, str]:
        return {"plans": self.plans, "configuration": self.configuration, "trainer": self.trainer}


def candidate_models(trainers: Sequence[str], configurations: Sequence[str], plans: Sequence[str]) -> list[ModelId]:
    """Every combination, in nnU-Net's order (trainer, then configuration, then plans)."""
    return [ModelId(t, p, c) for t in trainers for c in configurations for p in plans]


def _train_hint(dataset_name: str, model: ModelId, folds: Sequence[int | str]) -> str:
    return "; ".join(f"nnUNetv2_train {dataset_name} {model.configuration} {f} -tr {model.trainer} -p {model.plans} --npz"
                     for f in folds)


def available_models(candidates: Sequence[ModelId], *, dataset_name: str, results_root: PathLike,
                     preprocessed_root: PathLike, folds: Sequence[int | str], verbose: bool = True) -> list[ModelId]:
    """The candidates whose configuration exists in their plans; each must have a trained model folder.

    Raises:
        FileNotFoundError: a plans file is missing, or a model that the plans define was not trained (the message
            gives the training commands to run).
    """
    from nnseg.plans.schema import load_plans

    valid = []
    for model in candidates:
        folder = Path(results_root) / dataset_name / model.identifier
        plans_file = Path(preprocessed_root) / dataset_name / f"{model.plans}.json"
        if not plans_file.is_file() and (folder / "plans.json").is_file():
            plans_file = folder / "plans.json"  # e.g. an installed model without nnUNet_preprocessed plans
        plans = load_plans(plans_file)
        if model.configuration not in plans.available_configurations:
            if verbose:
                print(f"configuration {model.configuration} is not in plans {model.plans} of {dataset_name}: skipped")
            continue
        if not folder.is_dir():
            raise FileNotFoundError(f"trained model {model.identifier} of {dataset_name} has no output folder {folder}; "
                                    f"train it first (--npz keeps the probabilities that ensembling needs): "
                                    f"{_train_hint(dataset_name, model, folds)}; or leave -c {model.configuration} out")
        valid.append(model)
    return valid


def _dice(folder: Path) -> float:
    return float(load_json(folder / "summary.json")["foreground_mean"]["Dice"])


def pick_best(results: Mapping[str, float]) -> str:
    """The key with the highest value; the first one on ties; NaN counts as worst."""
    if not results:
        raise ValueError("no results to choose from")
    score = {k: (-math.inf if math.isnan(v) else v) for k, v in results.items()}
    best = next(iter(score))
    for key, value in score.items():
        if value > score[best]:
            best = key
    return best


def _collect_results(dataset_name: str, models: Sequence[ModelId], *, results_root: Path, ref: Path,
                     folds: Sequence[int | str], allow_ensembling: bool, num_processes: int,
                     overwrite: bool) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    folders = [results_root / dataset_name / m.identifier for m in models]
    for model, folder in zip(models, folders):
        sources[model.identifier] = accumulate_crossval_results(
            folder, folds=folds, ref_folder=ref, output_folder=None, num_processes=num_processes, overwrite=overwrite)
    if allow_ensembling:
        for i in range(len(folders)):
            for j in range(i + 1, len(folders)):
                name = ensemble_name(folders[i], folders[j], folds)
                out = results_root / dataset_name / "ensembles" / name
                ensemble_crossvalidations([folders[i], folders[j]], out, folds=folds, num_processes=num_processes,
                                          overwrite=overwrite)
                from nnseg.raw.dataset_json import load_dataset_json

                evaluate_folder_like_model(out, ref, spec=load_dataset_json(out / "dataset.json"),
                                           num_processes=num_processes)
                sources[name] = out
    return sources


def selected_models(best_key: str) -> list[ModelId]:
    """The member models of a result key (a model folder name or an ``ensemble___A___B___folds`` name)."""
    if best_key.startswith("ensemble___"):
        parts = best_key.split("___")
        return [ModelId.from_identifier(p) for p in parts[1:-1]]
    return [ModelId.from_identifier(best_key)]


def find_best_configuration(dataset_name: str, results_root: PathLike, preprocessed_root: PathLike, *,
                            configurations: Sequence[str] = DEFAULT_CONFIGURATIONS,
                            trainers: Sequence[str] = ("nnUNetTrainer",), plans: Sequence[str] = ("nnUNetPlans",),
                            folds: Sequence[int | str] = DEFAULT_FOLDS, allow_ensembling: bool = True,
                            num_processes: int = DEFAULT_NUM_PROCESSES, overwrite: bool = True,
                            raw_root: PathLike | None = None, verbose: bool = True) -> dict[str, Any]:
    """Select the best model or ensemble, determine its postprocessing and write the inference instructions.

    Writes ``results_root/<dataset>/inference_information.json`` (returned) and ``inference_instructions.txt``.

    Args:
        dataset_name: ``DatasetXXX_Name``.
        results_root, preprocessed_root: ``nnUNet_results`` and ``nnUNet_preprocessed`` (plans and gt_segmentations).
        configurations, trainers, plans: the combinations to consider; configurations absent from the plans are skipped.
        folds: the cross-validation folds every model must have.
        overwrite: False reuses existing cross-validation and ensemble outputs (``--no_overwrite``).
        raw_root: ``nnUNet_raw``, used for ``labelsTr`` when ``gt_segmentations`` does not exist.
    """
    from nnseg.metrics.postprocess_folder import determine_postprocessing_for_folder

    results_root = Path(results_root)
    candidates = candidate_models(trainers, configurations, plans)
    models = available_models(candidates, dataset_name=dataset_name, results_root=results_root,
                              preprocessed_root=preprocessed_root, folds=folds, verbose=verbose)
    if not models:
        raise ValueError(f"none of the configurations {list(configurations)} exist in plans {list(plans)} of "
                         f"{dataset_name}; check -c / -p")
    ref = reference_folder(dataset_name, preprocessed_root=preprocessed_root, raw_root=raw_root)
    sources = _collect_results(dataset_name, models, results_root=results_root, ref=ref, folds=folds,
                               allow_ensembling=allow_ensembling, num_processes=num_processes, overwrite=overwrite)
    all_results = {k: _dice(v) for k, v in sources.items()}
    best = pick_best(all_results)
    if verbose:
        print("\n***All results:***\n" + "\n".join(f"{k}: {v}" for k, v in all_results.items())
              + f"\n\n*Best*: {best}: {all_results[best]}\n\n***Determining postprocessing for best model/ensemble***")
    decision = determine_postprocessing_for_folder(sources[best], ref, num_processes=num_processes, verbose=verbose)
    info = {
        "folds": list(folds),
        "dataset_name_or_id": dataset_name,
        "considered_models": [m.to_json() for m in models],
        "ensembling_allowed": allow_ensembling,
        "all_results": all_results,
        "best_model_or_ensemble": {
            "result_on_crossval_pre_pp": all_results[best],
            "result_on_crossval_post_pp": float(decision.after["foreground_mean"]["Dice"]),
            "postprocessing_file": str(sources[best] / "postprocessing.pkl"),
            "some_plans_file": str(sources[best] / "plans.json"),
            "selected_model_or_models": [{"configuration": m.configuration, "trainer": m.trainer,
                                          "plans_identifier": m.plans} for m in selected_models(best)],
        },
    }
    save_json(info, results_root / dataset_name / "inference_information.json", sort_keys=True)
    write_inference_instructions(info, results_root=results_root, verbose=verbose)
    return info


def _model_plans(results_root: Path, dataset_name: str, model: ModelId) -> Any:
    from nnseg.plans.schema import load_plans

    plans_file = results_root / dataset_name / model.identifier / "plans.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} is missing; the trained model folder should hold a copy of its plans")
    return load_plans(plans_file)


def _predict_command(dataset_name: str, model: ModelId, *, folds: Sequence[int | str], input_folder: str,
                     output_folder: str, prev_folder: str | None, save_probabilities: bool) -> str:
    command = (f"nnUNetv2_predict -d {shlex.quote(dataset_name)} -i {input_folder} -o {output_folder} "
               f"-f {' '.join(str(f) for f in folds)} -tr {shlex.quote(model.trainer)} "
               f"-c {shlex.quote(model.configuration)} -p {shlex.quote(model.plans)}")
    if prev_folder is not None:
        command += f" -prev_stage_predictions {prev_folder}"
    return command + (" --save_probabilities" if save_probabilities else "")


def predict_commands(dataset_name: str, model: ModelId, *, folds: Sequence[int | str], results_root: PathLike,
                     output_folder: str = "OUTPUT_FOLDER", input_folder: str = "INPUT_FOLDER",
                     save_probabilities: bool = False) -> list[str]:
    """The ``nnUNetv2_predict`` command(s) for one model: for a cascade, each previous stage first (into
    ``<output_folder>_PREV_STAGE``, stages read from the model's ``plans.json``), then the model itself with
    ``-prev_stage_predictions`` (nnU-Net's printed instructions leave the previous stage out)."""
    plans = _model_plans(Path(results_root), dataset_name, model)
    chain = [model.configuration]
    while (previous := plans.resolved_configuration_dict(chain[0]).get("previous_stage")) not in (None, ""):
        if previous in chain:
            raise ValueError(f"configurations {chain} name each other as previous_stage; fix the plans of {model.identifier}")
        chain.insert(0, str(previous))
    outputs = [output_folder + "_PREV_STAGE" * (len(chain) - 1 - i) for i in range(len(chain))]
    return [_predict_command(dataset_name, ModelId(model.trainer, model.plans, c), folds=folds,
                             input_folder=input_folder, output_folder=out, prev_folder=outputs[i - 1] if i else None,
                             save_probabilities=save_probabilities and i == len(chain) - 1)
            for i, (c, out) in enumerate(zip(chain, outputs))]


def inference_instructions(info: Mapping[str, Any], *, results_root: PathLike, num_processes: int | None = None) -> str:
    """The text of ``inference_instructions.txt`` (nnU-Net's wording; every command on its own line); ``-np`` is
    ``num_processes`` [:func:`instructions_num_processes`]."""
    np_ = num_processes or instructions_num_processes()
    best = info["best_model_or_ensemble"]
    dataset_name = str(info["dataset_name_or_id"])
    members = [ModelId(m["trainer"], m["plans_identifier"], m["configuration"]) for m in best["selected_model_or_models"]]
    ensemble = len(members) > 1
    lines = ["***Run inference like this:***", ""]
    if ensemble:
        lines += [("An ensemble won! What a surprise! Run the following commands to run predictions with the ensemble "
                  "members:"), ""]
    outputs = []
    for j, model in enumerate(members):
        output = f"OUTPUT_FOLDER_MODEL_{j + 1}" if ensemble else "OUTPUT_FOLDER"
        outputs.append(output)
        lines += predict_commands(dataset_name, model, folds=info["folds"], results_root=results_root,
                                  output_folder=output, save_probabilities=ensemble)
    if ensemble:
        lines += ["", "Then run ensembling with:", "",
                  f"nnUNetv2_ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER -np {np_}"]
    lines += ["", "***Once inference is completed, run postprocessing like this:***", "",
              (f"nnUNetv2_apply_postprocessing -i OUTPUT_FOLDER -o OUTPUT_FOLDER_PP "
              f"-pp_pkl_file {shlex.quote(str(best['postprocessing_file']))} -np {np_} "
              f"-plans_json {shlex.quote(str(best['some_plans_file']))}")]
    return "\n".join(lines) + "\n"


def write_inference_instructions(info: Mapping[str, Any], *, results_root: PathLike, verbose: bool = True) -> Path:
    """Write (and print) ``results_root/<dataset>/inference_instructions.txt``."""
    text = inference_instructions(info, results_root=results_root)
    path = Path(results_root) / str(info["dataset_name_or_id"]) / "inference_instructions.txt"
    from nnseg.jsonio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if verbose:
        print("\n" + text)
    return path

