"""Fine-tuning: copy pretrained weights into a network whose label set or input channels differ, with a report.

Rules (``-pretrained_weights``):

* every tensor whose name and shape match is loaded;
* the segmentation heads (``.seg_layers.``) are loaded only when the pretrained ``dataset.json`` declares the same
  labels; otherwise (another label set, or the pretrained labels unknown: nnU-Net's rule) they keep their fresh
  initialisation;
* the input convolution is mapped channel by channel when the channels differ (count, names or order): a target
  channel whose name the pretrained ``dataset.json`` declares (case-insensitive) gets that channel's weights, the
  others get the mean over the pretrained channels (``--set pretrained_new_channels=mean``), zeros (``zero``) or
  keep their fresh initialisation (``random``); without pretrained names channels are matched by position;
* inputs a training task appends after the images (an interactive model's prompt channels) start at zero whatever
  that setting, so the fine-tuned network first computes what the pretrained one did and learns to use them;
* anything else (a name the source lacks, another shape) keeps its fresh initialisation and is reported as skipped.

A source of which nothing outside the heads and the input fits is refused: it is another architecture.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnseg.jsonio import save_json
from nnseg.training.pretrained import PretrainedSource

HEAD_MARK = ".seg_layers."
REPORT_FILE = "pretrained_weights_report.json"
NEW_CHANNEL_RULES = ("mean", "zero", "random")


@dataclass
class LoadReport:
    """What fine-tuning did with each tensor (shapes as lists); ``channels``: where each input channel came from."""

    source: str
    loaded: list[dict[str, Any]] = field(default_factory=list)
    reinitialised: list[dict[str, Any]] = field(default_factory=list)
    mapped: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    unused: list[dict[str, Any]] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)

    @property
    def body_loaded(self) -> int:
        return sum(1 for e in self.loaded if HEAD_MARK not in e["name"])

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "channels": self.channels, "counts": {
            k: len(getattr(self, k)) for k in ("loaded", "reinitialised", "mapped", "skipped", "unused")},
            "loaded": self.loaded, "reinitialised": self.reinitialised, "mapped": self.mapped,
            "skipped": self.skipped, "unused": self.unused}

    def text(self) -> str:
        lines = [f"Pretrained weights from {self.source}: {len(self.loaded)} tensors loaded, {len(self.mapped)} "
                 f"channel-mapped, {len(self.reinitialised)} re-initialised, {len(self.skipped)} skipped, "
                 f"{len(self.unused)} unused"]
        lines += [f"  input channel {c}" for c in self.channels]
        for kind in ("mapped", "reinitialised", "skipped"):
            lines += [f"  {kind}: {e['name']} {e.get('shape')} <- {e.get('source_shape')} ({e.get('why', '')})".rstrip(" ()")
                      for e in getattr(self, kind)]
        return "\n".join(lines)


def _shape(t: Any) -> list[int] | None:
    return [int(s) for s in t.shape] if hasattr(t, "shape") else None


def channel_sources(target: Sequence[str], source: Sequence[str] | None, num_source: int) -> list[int | None]:
    """Per target channel: the pretrained channel index it copies, or None (a new channel)."""
    if source is None:
        return [i if i < num_source else None for i in range(len(target))]
    lowered = [s.casefold() for s in source]
    out: list[int | None] = []
    for name in target:
        if name in source:
            out.append(list(source).index(name))
        else:
            out.append(lowered.index(name.casefold()) if name.casefold() in lowered else None)
    return out


def _map_input(own: torch.Tensor, src: torch.Tensor, plan: list[int | None], rules: list[str]) -> torch.Tensor | None:
    if own.is_meta:
        return None
    out = own.detach().clone()
    src = src.to(out.dtype)
    for i, (j, rule) in enumerate(zip(plan, rules)):
        if j is not None:
            out[:, i] = src[:, j]
        elif rule == "mean":
            out[:, i] = src.mean(1)
        elif rule == "zero":
            out[:, i] = 0
    return out


def _module_path(key: str) -> str:
    """A tensor's name without the aliases a network registers it under (the decoder's reference to the encoder,
    ``all_modules.0`` beside ``conv``)."""
    return key.removeprefix("decoder.").replace(".all_modules.0.", ".conv.")


def _input_keys(own: Mapping[str, torch.Tensor]) -> set[str]:
    """The input convolution's keys: the first tensor of 3+ dims and its aliases (not another convolution that
    happens to have the same shape, e.g. a decoder convolution with as many inputs as the network)."""
    first = next((k for k, v in own.items() if v.ndim >= 3), None)
    if first is None:
        return set()
    return {k for k, v in own.items() if _module_path(k) == _module_path(first) and v.shape == own[first].shape}


@dataclass(frozen=True)
class TargetInfo:
    """The fine-tuned network's dataset: input channel names and labels (``dataset.json``); ``task_channels``: names
    of the last inputs, a training task's, which start at zero."""

    channel_names: list[str]
    labels: dict[str, Any]
    new_channels: str = "mean"
    task_channels: tuple[str, ...] = ()

    @classmethod
    def from_dataset_json(cls, spec: Mapping[str, Any], *, extra_channels: Sequence[str] = (),
                          new_channels: str = "mean", task_channels: Sequence[str] = ()) -> "TargetInfo":
        """From a ``dataset.json`` dict; ``extra_channels``: inputs beyond the images (a cascade's one-hot maps), then
        ``task_channels`` (a training task's inputs, e.g. an interactive model's prompts)."""
        names = dict(spec.get("channel_names") or spec.get("modality") or {})
        ordered = [str(names[k]) for k in sorted(names, key=lambda k: int(k) if str(k).isdigit() else 0)]
        return cls([*ordered, *extra_channels, *task_channels], dict(spec.get("labels") or {}), new_channels,
                   tuple(task_channels))

    def rule(self, index: int) -> str:
        """How the channel at ``index`` starts when the source lacks it: task channels at zero, others by the rule."""
        return "zero" if index >= len(self.channel_names) - len(self.task_channels) else self.new_channels


def _channel_plan(own: Mapping[str, torch.Tensor], source: PretrainedSource, target: TargetInfo,
                  report: LoadReport) -> tuple[set[str], list[int | None] | None]:
    keys = _input_keys(own)
    src_first = next((source.weights[k] for k in sorted(keys) if k in source.weights), None)
    if src_first is None or src_first.ndim < 3:
        return set(), None
    names = source.channel_names
    num_source = int(src_first.shape[1])
    if names is not None and len(names) != num_source:
        names = None
    plan = channel_sources(target.channel_names, names, num_source)
    if plan == list(range(num_source)) and len(plan) == num_source:
        return set(), None  # same channels in the same order: a plain load
    for i, (name, j) in enumerate(zip(target.channel_names, plan)):
        rule = target.rule(i)
        origin = (f"copied from pretrained channel {j}" + (f" {names[j]!r}" if names else "")) if j is not None \
            else f"new: {rule}" + (" of the pretrained channels" if rule == "mean" else "")
        report.channels.append(f"{i} {name!r}: {origin}")
    return set(keys), plan


def plan_transfer(own: Mapping[str, torch.Tensor], source: PretrainedSource, target: TargetInfo
                  ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The tensors to put into ``own`` (none computed for ``meta`` tensors) and the report of the decision."""
    report = LoadReport(source.where)
    same_labels = source.labels is not None and source.labels == dict(target.labels)
    input_keys, plan = _channel_plan(own, source, target, report)
    values: dict[str, torch.Tensor] = {}
    for key, mine in own.items():
        src = source.weights.get(key)
        entry = {"name": key, "shape": _shape(mine), "source_shape": _shape(src)}
        if key in input_keys and plan is not None and src is not None and _shape(src)[0] == _shape(mine)[0] \
                and list(src.shape[2:]) == list(mine.shape[2:]):
            report.mapped.append({**entry, "why": "input channels mapped by name"})
            mapped = _map_input(mine, src, plan, [target.rule(i) for i in range(len(plan))])
            if mapped is not None:
                values[key] = mapped
        elif HEAD_MARK in key and not (same_labels and entry["shape"] == entry["source_shape"]):
            why = "pretrained labels unknown" if source.labels is None else "label set differs"
            report.reinitialised.append({**entry, "why": why})
        elif src is not None and entry["shape"] == entry["source_shape"]:
            report.loaded.append(entry)
            values[key] = src
        else:
            report.skipped.append({**entry, "why": "not in the source" if src is None else "shape differs"})
    report.unused = [{"name": k, "source_shape": _shape(v)} for k, v in source.weights.items() if k not in own]
    return values, report


def check_transfer(report: LoadReport, path: Path) -> None:
    """Refuse a source of which nothing outside the heads and the input convolution fits."""
    if report.body_loaded == 0:
        examples = [f"{e['name']} {e['shape']} vs {e['source_shape']}" for e in report.skipped[:3]]
        raise ValueError(f"-pretrained_weights {path} do not fit this network ({len(report.skipped)} keys missing or "
                         f"with another shape, e.g. {examples}); plans of both must describe the same architecture "
                         "(use nnUNetv2_move_plans_between_datasets), or leave -pretrained_weights out")


def load_pretrained(network: torch.nn.Module, source: PretrainedSource, target: TargetInfo, *, path: Path,
                    report_folder: Path | None) -> LoadReport:
    """Copy the weights into ``network``; print the report and write it to ``report_folder/REPORT_FILE``."""
    own = network.state_dict()
    values, report = plan_transfer(own, source, target)
    check_transfer(report, path)
    own.update({k: v.to(own[k].dtype) for k, v in values.items()})
    network.load_state_dict(own)
    if report_folder is not None:
        save_json(report.to_json(), Path(report_folder) / REPORT_FILE)
        print(report.text(), file=sys.stderr)
    return report
