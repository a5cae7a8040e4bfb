"""The HTML of :mod:`nnseg.metrics.report`: one self-contained page (inline CSS, PNGs as ``data:`` URIs, no JS)."""

from __future__ import annotations

import base64
import datetime
import html
import math
from collections.abc import Mapping, Sequence

from nnseg.metrics.report_tables import (
    DiceTable,
    FoldResult,
    ModelInfo,
    boxplot_png,
    dice_table,
)

__all__ = ["data_uri", "render_html"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; font-size: 0.9em; } .meta code { background: #f3f3f3; padding: 0 0.3em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.case, th.case { text-align: left; font-family: monospace; }
.scroll { overflow-x: auto; max-width: 100%; }
tfoot td { font-weight: bold; background: #f7f7f7; }
img.plot { max-width: 100%; border: 1px solid #eee; } img.progress { width: 560px; max-width: 100%; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; } .row > div { min-width: 0; }
img.overlay { max-width: 540px; image-rendering: pixelated; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #444; }
details pre { font-size: 0.75em; overflow-x: auto; background: #f7f7f7; padding: 0.5em; }
.note { color: #8a4b00; background: #fff6e5; padding: 0.3em 0.6em; border-left: 3px solid #f0a030; }
"""


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" alt="{html.escape(alt)}" src="{data_uri(png)}">'


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def _cell(value: float) -> str:
    if math.isnan(value):
        return '<td title="empty reference and prediction">–</td>'
    hue = round(120 * min(max(value, 0.0), 1.0))
    return f'<td style="background: hsl({hue}, 70%, 88%)">{value:.4f}</td>'


def _header(table: DiceTable, names: Mapping[str, str]) -> str:
    cols = "".join(f"<th>{html.escape(names.get(k, k))}<br><small>{html.escape(k)}</small></th>" for k in table.labels)
    return f'<thead><tr><th class="case">case</th>{cols}<th>mean</th></tr></thead>'


def dice_table_html(table: DiceTable, names: Mapping[str, str]) -> str:
    """The per-case Dice table with the per-label means as footer."""
    rows = []
    for cid, dice in table.cases:
        finite = [d for d in dice if not math.isnan(d)]
        mean = sum(finite) / len(finite) if finite else math.nan
        rows.append(f'<tr><td class="case">{html.escape(cid)}</td>{"".join(_cell(d) for d in dice)}{_cell(mean)}</tr>')
    foot = "".join(f"<td>{_fmt(m)}</td>" for m in table.mean)
    return (f'<div class="scroll"><table class="dice">{_header(table, names)}<tbody>{"".join(rows)}</tbody>'
            f'<tfoot><tr><td class="case">mean</td>{foot}<td>{_fmt(table.foreground_mean)}</td></tr></tfoot></table></div>')


def overview_html(folds: Sequence[FoldResult], names: Mapping[str, str]) -> str:
    """One row per fold with a summary: mean Dice per label and the foreground mean."""
    tables = [(f.name, dice_table(f.summary)) for f in folds if f.summary is not None]
    if not tables:
        return '<p class="note">no fold has a validation/summary.json yet</p>'
    labels = list(dict.fromkeys(k for _, t in tables for k in t.labels))
    head = "".join(f"<th>{html.escape(names.get(k, k))}</th>" for k in labels)
    rows = []
    for name, t in tables:
        values = [t.mean[t.labels.index(k)] if k in t.labels else math.nan for k in labels]
        rows.append(f'<tr><td class="case">{html.escape(name)}</td><td>{len(t.cases)}</td>'
                    f'{"".join(_cell(v) for v in values)}{_cell(t.foreground_mean)}</tr>')
    return (f'<div class="scroll"><table class="overview"><thead><tr><th class="case">fold</th><th>cases</th>{head}<th>foreground mean</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _worst_html(fold: FoldResult) -> str:
    if not fold.worst:
        return ""
    parts = [f"<h3>Worst {len(fold.worst)} cases (lowest mean foreground Dice)</h3>",
             "<p class=\"meta\">Slice with the most reference foreground; left: image + reference, right: image + prediction.</p>"]
    for case in fold.worst:
        caption = f"{html.escape(case.identifier)}: mean Dice {_fmt(case.mean_dice)}"
        if case.png is None:
            parts.append(f'<p class="note">{caption}: {html.escape(case.note)}</p>')
        else:
            parts.append(f"<figure>{_img(case.png, f'overlay of {case.identifier}', 'overlay')}"
                         f"<figcaption>{caption}</figcaption></figure>")
    return "\n".join(parts)


def _run_html(fold: FoldResult) -> str:
    """The training settings from ``debug.json`` and the network summary (folded away, no JS needed)."""
    parts = []
    if fold.run_info:
        items = " · ".join(f"{html.escape(k)} <code>{html.escape(v)}</code>" for k, v in fold.run_info.items())
        parts.append(f'<p class="meta">{items}</p>')
    if fold.architecture is not None:
        first = next((ln for ln in fold.architecture.splitlines() if ln.startswith("parameters:")), "network architecture")
        parts.append(f"<details><summary>{html.escape(first)} (network_architecture.txt)</summary>"
                     f"<pre>{html.escape(fold.architecture)}</pre></details>")
    return "\n".join(parts)


def fold_html(fold: FoldResult, names: Mapping[str, str]) -> str:
    """The section of one fold: notes, progress plot, Dice box plot and table, worst cases."""
    parts = [f'<section class="fold" id="{html.escape(fold.name)}"><h2>{html.escape(fold.name)}</h2>']
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in fold.notes]
    parts.append(_run_html(fold))
    parts.append('<div class="row">')
    if fold.progress_png is not None:
        parts += ["<div><h3>Training progress</h3>",
                  _img(fold.progress_png, f"training progress of {fold.name}", "plot progress"), "</div>"]
    if fold.summary is not None:
        table = dice_table(fold.summary)
        parts += [f"<div><h3>Validation Dice ({len(table.cases)} cases, foreground mean {_fmt(table.foreground_mean)})</h3>",
                  _img(boxplot_png(fold.summary, label_names=names), f"Dice box plot of {fold.name}"), "</div></div>",
                  "<h3>Dice per case</h3>", dice_table_html(table, names), _worst_html(fold)]
    else:
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(info: ModelInfo, folds: Sequence[FoldResult], *, generated: datetime.datetime | None = None) -> str:
    """The whole page: title (dataset, trainer, plans, configuration), an overview over folds, one section per fold."""
    when = (generated or datetime.datetime.now()).strftime("%Y-%m-%d %H:%M")
    title = f"{info.dataset}: {info.trainer} / {info.plans} / {info.configuration}"
    names = dict(info.label_names)
    meta = (f'<p class="meta">dataset <code>{html.escape(info.dataset)}</code> · trainer <code>{html.escape(info.trainer)}'
            f'</code> · plans <code>{html.escape(info.plans)}</code> · configuration <code>{html.escape(info.configuration)}'
            f'</code><br>model folder <code>{html.escape(info.folder)}</code> · report written {when} by nnseg</p>')
    body = [f"<h1>{html.escape(title)}</h1>", meta, "<h2>Overview</h2>", overview_html(folds, names)]
    body += [fold_html(f, names) for f in folds]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
