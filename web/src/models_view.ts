// The "Models" view: what each served model is, and its training report (curves, Dice per case, box plot, worst
// cases) when its folder has a validation. The report is the server's HTML, shown in a sandboxed frame (no scripts).
import type { Api, DisplayInfo, ModelSummary } from "./api";
import { el, swatch } from "./dom";

function details(model: ModelSummary, display: DisplayInfo): HTMLElement {
  const rows: [string, Node | string][] = [
    ["dataset", model.dataset],
    ["configuration", `${model.configuration} (${model.dimension}D), trainer ${model.trainer}`],
    ["channels", Object.entries(model.channels).map(([k, v]) => `${k}: ${v}`).join(", ")],
    ["folds", model.folds.join(", ")],
    ["runs on", `${model.device}, ${model.backend}${model.tta ? ", with test-time mirroring" : ""}`],
    ["DICOM", display.dicom_zip ? (display.dicom_seg ? "series zip in, NIfTI or DICOM SEG out" : "series zip in, NIfTI out") : "not on this server"],
  ];
  const labels = el("span");
  for (const l of display.labels) {
    labels.append(el("span", { className: "chip" }, swatch(l.color), `${l.value} ${l.name}`));
  }
  rows.push(["labels", labels]);
  return el("table", { className: "facts" }, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
}

async function reportFrame(api: Api, model: ModelSummary, target: HTMLElement): Promise<void> {
  target.replaceChildren(el("p", { className: "muted" }, "Loading the training report (the plots take a few seconds the first time)…"));
  try {
    const html = await api.text(`/v1/models/${encodeURIComponent(model.name)}/report`);
    const frame = el("iframe", { className: "report", title: `training report of ${model.name}` });
    frame.setAttribute("sandbox", "");
    frame.srcdoc = html;
    target.replaceChildren(frame);
  } catch (e) {
    target.replaceChildren(el("p", { className: "error", role: "alert" } as Partial<HTMLParagraphElement>, `No report: ${(e as Error).message}`));
  }
}

export async function renderModels(api: Api, models: ModelSummary[], root: HTMLElement): Promise<void> {
  root.replaceChildren();
  for (const model of models) {
    const display = await api.json<DisplayInfo>(`/v1/models/${encodeURIComponent(model.name)}/display`);
    const section = el("section", { className: "model-card" }, el("h2", {}, model.name), details(model, display));
    const report = el("div", { className: "report-box" });
    if (display.report) {
      const button = el("button", { type: "button", textContent: "Show training report" });
      button.addEventListener("click", () => void reportFrame(api, model, report));
      section.append(button, report);
    } else {
      section.append(el("p", { className: "muted" }, "No validation in this model folder (fold_*/validation/summary.json): no training report."));
    }
    root.append(section);
  }
}
