"""The network summary written at training start: ``network_architecture.txt`` (always) and
``network_architecture.pdf`` (only when the optional ``torchview`` or ``graphviz`` package and Graphviz's ``dot``
are installed; nnU-Net used the unmaintained hiddenlayer for this, nnseg never does).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnseg.jsonio import atomic_path
from nnseg.networks.summary import count_parameters, network_summary
from nnseg.training.hooks import Hooks

__all__ = ["NetworkSummary", "architecture_text", "graph_pdf_bytes", "layer_table"]

TEXT_NAME = "network_architecture.txt"
PDF_NAME = "network_architecture.pdf"


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` / DDP wrapper."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(network, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return network


def layer_table(net: nn.Module) -> str:
    """One line per leaf layer: name, type, settings (``extra_repr``) and parameter count (shared layers once)."""
    rows = []
    for name, module in net.named_modules():
        if next(module.children(), None) is not None:
            continue
        params = sum(p.numel() for p in module.parameters(recurse=False))
        settings = module.extra_repr().replace("\n", " ")
        rows.append(f"{name:<58} {type(module).__name__:<20} {params:>10,}  {settings}")
    header = f"{'layer':<58} {'type':<20} {'params':>10}  settings"
    return "\n".join([header, "-" * len(header), *rows])


def architecture_text(net: nn.Module, patch_size: Sequence[int], *, input_channels: int,
                      title: str = "") -> str:
    """The text of ``network_architecture.txt``.

    Args:
        net: the network (a compile/DDP wrapper is looked through).
        patch_size: spatial patch size, one int per axis.
        input_channels: number of input channels.
        title: a first line (e.g. trainer and fold folder).

    Returns:
        Title, input shape, parameter counts, the per-stage table of :func:`nnseg.networks.summary.network_summary`
        (channels and feature-map size per stage) and the per-layer table.
    """
    net = _unwrap(net)
    total, trainable = count_parameters(net), count_parameters(net, trainable_only=True)
    lines = [title] if title else []
    lines += [f"network: {type(net).__name__}", f"input: {input_channels} channel(s) x {' x '.join(map(str, patch_size))}",
              f"parameters: {total:,} ({trainable:,} trainable)", "", "feature maps per stage:"]
    try:
        lines.append(network_summary(net, patch_size))
    except (ValueError, AttributeError, TypeError) as e:
        lines.append(f"(no per-stage table for {type(net).__name__}: {e})")
    return "\n".join([*lines, "", "layers:", layer_table(net), ""])


def _stage_graph(net: nn.Module) -> Any:
    """A graphviz ``Digraph`` of the U-Net stages with skip connections (used when torchview is absent)."""
    import graphviz

    graph = graphviz.Digraph("network", graph_attr={"rankdir": "TB"}, node_attr={"shape": "box"})
    encoder = net.encoder
    channels = list(encoder.output_channels)
    for s, c in enumerate(channels):
        graph.node(f"e{s}", f"encoder {s}\\n{c} ch, stride {encoder.strides[s]}")
        if s:
            graph.edge(f"e{s - 1}", f"e{s}")
    previous = f"e{len(channels) - 1}"
    for s in range(len(net.decoder.stages)):
        graph.node(f"d{s}", f"decoder {s}\\n{channels[-(s + 2)]} ch")
        graph.edge(previous, f"d{s}")
        graph.edge(f"e{len(channels) - s - 2}", f"d{s}", style="dashed", label="skip")
        previous = f"d{s}"
    return graph


def graph_pdf_bytes(net: nn.Module, patch_size: Sequence[int], *, input_channels: int) -> bytes | None:
    """The network drawn as PDF with ``torchview`` (preferred) or ``graphviz``; None when neither is installed.

    Raises whatever the graph library raises (e.g. Graphviz's ``dot`` program missing).
    """
    net = _unwrap(net)
    if importlib.util.find_spec("torchview") is not None:
        import torchview

        device = next(net.parameters()).device
        with torch.no_grad():
            drawn = torchview.draw_graph(net, input_size=(1, input_channels, *patch_size), device=device, depth=2)
        return drawn.visual_graph.pipe(format="pdf")
    if importlib.util.find_spec("graphviz") is not None and hasattr(net, "encoder") and hasattr(net, "decoder"):
        return _stage_graph(net).pipe(format="pdf")
    return None


class NetworkSummary(Hooks):
    """Writes ``network_architecture.txt`` (and the optional PDF) into the fold folder when training starts."""

    def __init__(self, folder: Path, *, pdf: bool = True) -> None:
        self.folder, self.pdf = Path(folder), pdf

    def on_train_start(self, run: Any, state: Any, network: nn.Module) -> None:
        patch, channels = tuple(run.patch_size), int(run.num_input_channels)
        text = architecture_text(network, patch, input_channels=channels,
                                 title=f"{run.trainer_name}: {self.folder}")
        if self.pdf:
            text += self._write_pdf(network, patch, channels)
        with atomic_path(self.folder / TEXT_NAME) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def _write_pdf(self, network: nn.Module, patch: tuple[int, ...], channels: int) -> str:
        try:
            pdf = graph_pdf_bytes(network, patch, input_channels=channels)
        except Exception as e:  # noqa: BLE001 - an optional third-party drawing must never stop a training run
            return f"\n(no {PDF_NAME}: the graph library failed: {type(e).__name__}: {e})\n"
        if pdf is None:
            return f"\n(no {PDF_NAME}: install torchview or graphviz, and Graphviz's dot program, to get one)\n"
        with atomic_path(self.folder / PDF_NAME) as tmp:
            tmp.write_bytes(pdf)
        return ""
