// The page of `nnseg serve`: log in, pick a model, upload a case, follow the job, look at the result in 2D and 3D,
// correct it, download it; and the "Models" view with each model's training report.
import { Api, ApiError, waitForJob } from "./api";
import type { DisplayInfo, JobInfo, LabelInfo, ModelList, ModelSummary } from "./api";
import { LOCAL_TOOLS, promptTools, undo } from "./correction";
import type { CorrectionTool, Report } from "./correction";
import { byId, download, el, gzip, swatch } from "./dom";
import { interactiveCapabilities, PromptSession } from "./interactive";
import { renderModels } from "./models_view";
import { Viewer } from "./viewer";
import type { Layout, Location } from "./viewer";

const ENDINGS = [".nii.gz", ".nrrd", ".mha"];
const api = new Api();
const viewer = new Viewer();

interface Result {
  model: string;
  caseName: string;
  labelMap: ArrayBuffer;
  dicomZip: File | null;
  labels: LabelInfo[];
}

const state: { models: ModelSummary[]; maxUpload: number; display: DisplayInfo | null; result: Result | null;
  tool: CorrectionTool | null; cancel: { cancelled: boolean } | null; busy: boolean; tools: CorrectionTool[];
  prompts: PromptSession | null; } = {
  models: [], maxUpload: Infinity, display: null, result: null, tool: null, cancel: null, busy: false, tools: LOCAL_TOOLS,
  prompts: null,
};

function message(text: string, kind: "error" | "info" | "ok" = "info"): void {
  const box = byId("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = text === "";
}

function phase(text: string, fraction: number | null): void {
  byId("phase").textContent = text;
  const bar = byId<HTMLProgressElement>("progress");
  bar.hidden = fraction === null && text === "";
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
}

// ---- login and models ---------------------------------------------------------------------------------------------

async function connect(): Promise<void> {
  try {
    const list = await api.json<ModelList>("/v1/models");
    state.models = list.models;
    state.maxUpload = list.max_upload_bytes;
    await fillModels();
    byId("login").hidden = true;
    byId("app").hidden = false;
    byId("login-state").textContent = api.hasToken ? "logged in" : "no token needed";
    message("");
    await offerPrompts();
  } catch (e) {
    const error = e as ApiError;
    if (error.status === 401) {
      byId("login").hidden = false;
      byId("app").hidden = true;
      byId("login-error").textContent = api.hasToken
        ? "Wrong token: the server refused it (401). Ask whoever runs nnseg serve for its --token." : "";
      byId<HTMLInputElement>("token").focus();
    } else {
      message(error.message, "error");
    }
  }
}

/** With an interactive model served, its prompt tools join the correction tools. */
async function offerPrompts(): Promise<void> {
  const caps = await interactiveCapabilities(api);
  if (!caps || state.prompts) return;
  state.prompts = new PromptSession(api, viewer);
  state.tools = [...LOCAL_TOOLS, ...promptTools(caps.supported_interactions, state.prompts, prompted)];
  renderTools();
  byId("tools").dataset.interactive = caps.license || "yes";
  byId("seed").hidden = false;
}

/** "Correct with clicks": the selected label of the result seeds the interactive model (its initial mask), and the
 * point+ tool is chosen, so the next clicks refine the label as the automatic model left it. */
async function seedLabel(): Promise<void> {
  const prompts = state.prompts;
  if (!prompts || !state.result || state.busy) return;
  const value = Number(byId<HTMLSelectElement>("pen-label").value);
  const name = state.result.labels.find((l) => l.value === value)?.name ?? `label ${value}`;
  const button = byId<HTMLButtonElement>("seed");
  button.disabled = true;
  phase(`Sending the scan and ${name} to the interactive model…`, null);
  try {
    await prompts.seed(value);
    selectTool(state.tools.find((t) => t.id === "point+") ?? state.tools.find((t) => t.id === "box+") ?? null);
    button.dataset.seeded = String(value);
    message(`${name} is ready to correct: click a voxel it should include (point+) or leave out (point−), or drag a box.`, "ok");
  } catch (e) {
    message(`The interactive model could not take ${name}: ${(e as Error).message}`, "error");
  } finally {
    button.disabled = false;
    phase("", null);
  }
}

const prompted: Report = (error, busy, prompt) => {
  const tools = byId("tools");
  tools.dataset.busy = busy ? "1" : "0";
  if (prompt) tools.dataset.lastPrompt = JSON.stringify(prompt);
  phase(busy ? "Asking the interactive model…" : "", null);
  if (error) message(`The interactive model could not refine the label: ${error.message}`, "error");
  if (busy || error) return;
  tools.dataset.prompts = String(Number(tools.dataset.prompts ?? "0") + 1);
  updateVolumes();
  byId("edited").textContent = "The mask was edited: download the corrected mask to keep the changes.";
};

async function fillModels(): Promise<void> {
  const select = byId<HTMLSelectElement>("model");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.name, textContent: m.name })));
  await chooseModel();
  void renderModels(api, state.models, byId("models-list")).catch((e) => message((e as Error).message, "error"));
}

async function chooseModel(): Promise<void> {
  const name = byId<HTMLSelectElement>("model").value;
  state.display = null;
  if (!name) {
    message("This server serves no model.", "error");
    return;
  }
  const display = await api.json<DisplayInfo>(`/v1/models/${encodeURIComponent(name)}/display`);
  state.display = display;
  const inputs = byId("inputs");
  inputs.replaceChildren();
  for (const [index, channel] of Object.entries(display.channels)) {
    const input = el("input", { type: "file", id: `channel-${index}`, accept: ENDINGS.join(",") });
    inputs.append(el("label", { className: "file" }, `Channel ${index} (${channel})`, input));
  }
  const dicom = byId("dicom-row");
  dicom.hidden = !display.dicom_zip;
  byId("labels-preview").replaceChildren(...display.labels.map((l) =>
    el("span", { className: "chip" }, swatch(l.color), l.name)));
}

// ---- upload and job -----------------------------------------------------------------------------------------------

interface Chosen {
  files: File[];
  dicom: File | null;
}

function chosenFiles(display: DisplayInfo): Chosen {
  const zip = byId<HTMLInputElement>("dicom-file").files?.[0] ?? null;
  if (zip && display.dicom_zip) {
    if (!zip.name.toLowerCase().endsWith(".zip")) throw new Error(`'${zip.name}' is not a .zip: zip the folder of one DICOM series and choose the zip`);
    return { files: [zip], dicom: zip };
  }
  const files: File[] = [];
  for (const [index, channel] of Object.entries(display.channels)) {
    const file = byId<HTMLInputElement>(`channel-${index}`).files?.[0];
    if (!file) throw new Error(`Choose a file for channel ${index} (${channel})${display.dicom_zip ? ", or a DICOM series zip" : ""}.`);
    if (!ENDINGS.some((e) => file.name.toLowerCase().endsWith(e))) {
      throw new Error(`'${file.name}' (channel ${index}) is not a NIfTI (.nii.gz), NRRD (.nrrd) or MHA (.mha) image; choose one of those${display.dicom_zip ? " or a zip of a DICOM series" : ""}.`);
    }
    files.push(file);
  }
  return { files, dicom: null };
}

function checkSize(files: File[]): void {
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (total > state.maxUpload) {
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    throw new ApiError(413, `The upload is too large: ${mib(total)} MiB, this server takes at most ${mib(state.maxUpload)} MiB (its --max_upload_mb). Crop or compress the image, or ask for a larger limit.`);
  }
}

function caseName(file: File): string {
  const lower = file.name.toLowerCase();
  const ending = [...ENDINGS, ".zip"].find((e) => lower.endsWith(e)) ?? "";
  return file.name.slice(0, file.name.length - ending.length).replace(/_0000$/, "") || "case";
}

async function run(): Promise<void> {
  const display = state.display;
  if (state.busy) return;
  if (!display) {
    message("The model's description has not arrived yet; choose the model again or reload the page.", "error");
    return;
  }
  let chosen: Chosen;
  try {
    chosen = chosenFiles(display);
    checkSize(chosen.files);
  } catch (e) {
    message((e as Error).message, "error");
    return;
  }
  setBusy(true);
  message("");
  state.cancel = { cancelled: false };
  try {
    const form = new FormData();
    for (const f of chosen.files) form.append("file", f, f.name);
    const format = chosen.dicom ? "" : "?result_format=.nii.gz";
    phase("Uploading…", 0);
    const job = await api.upload<JobInfo>(`/v1/models/${encodeURIComponent(display.name)}/jobs${format}`, form, (p) => phase(`Uploading ${Math.round(p * 100)} %`, p));
    // the scan is shown while it is segmented; a scan the page cannot draw is reported only if the server can read it
    const shown = showScan(chosen).then(() => null, (e: Error) => e);
    const ended = await waitForJob(api, job.id, showJob, state.cancel);
    if (ended.status !== "done") {
      phase("", null);
      message(ended.status === "cancelled" ? "Cancelled." : `The prediction failed: ${ended.error ?? "no reason given"}`, ended.status === "cancelled" ? "info" : "error");
      return;
    }
    const start = performance.now();
    const failed = await shown;
    if (failed) throw new Error(`The prediction is done, but this page cannot show the scan (${failed.message}); download it below.`);
    await showResult(display, chosen, ended, start);
  } catch (e) {
    phase("", null);
    message((e as Error).message, "error");
  } finally {
    setBusy(false);
  }
}

async function showScan(chosen: Chosen): Promise<void> {
  state.result = null;
  state.prompts?.release();
  byId("result").hidden = true;
  let image: ArrayBuffer;
  let imageName = chosen.files[0].name;
  if (chosen.dicom) {
    const form = new FormData();
    form.append("file", chosen.dicom, chosen.dicom.name);
    image = await api.bytes("/v1/dicom/image", { method: "POST", body: form });
    imageName = "dicom_image.nii.gz";
  } else {
    image = await chosen.files[0].arrayBuffer();
  }
  await viewer.showImage(image, imageName);
  byId("placeholder").hidden = true;
}

function showJob(job: JobInfo): void {
  if (job.status === "queued") phase("Waiting in the server's queue…", null);
  else if (job.status === "running") phase(`Predicting ${Math.round(job.progress * 100)} %`, job.progress);
  else if (job.status === "done") phase("Loading the result…", 1);
}

async function showResult(display: DisplayInfo, chosen: Chosen, job: JobInfo, start: number): Promise<void> {
  const labelMap = await api.bytes(`/v1/jobs/${encodeURIComponent(job.id)}/result`);
  void api.json(`/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" }).catch(() => undefined);
  await viewer.showLabels(labelMap, display.labels);
  state.result = { model: display.name, caseName: caseName(chosen.files[0]), labelMap, dicomZip: chosen.dicom, labels: display.labels };
  renderResultPanel(display);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const ms = performance.now() - start;
  const timing = byId("timing");
  timing.dataset.ms = ms.toFixed(0);
  const serverLag = job.finished ? Date.now() / 1000 - job.finished : NaN;
  timing.dataset.sinceFinished = serverLag.toFixed(3);
  timing.textContent = `shown ${(ms / 1000).toFixed(2)} s after the prediction ended`;
  phase("", null);
  message(`Segmented ${state.result.caseName} with ${display.name}.`, "ok");
}

function setBusy(busy: boolean): void {
  state.busy = busy;
  byId<HTMLButtonElement>("run").disabled = busy;
  byId<HTMLButtonElement>("cancel").hidden = !busy;
}

// ---- result panel: labels, view, correction, downloads ------------------------------------------------------------

function renderResultPanel(display: DisplayInfo): void {
  byId("result").hidden = false;
  byId("placeholder").hidden = true;
  const rows = display.labels.map((l) => {
    const box = el("input", { type: "checkbox", checked: true, title: `show ${l.name}` });
    box.dataset.label = String(l.value);
    box.addEventListener("change", () => viewer.setVisible(l.value, box.checked));
    const volume = el("td", { className: "num" });
    volume.dataset.volume = String(l.value);
    const name = el("button", { type: "button", className: "link", textContent: l.name, title: `go to ${l.name}` });
    name.dataset.goto = String(l.value);
    name.addEventListener("click", () => {
      if (!viewer.centerOn(l.value)) message(`${l.name} is empty in this mask.`);
    });
    return el("tr", {}, el("td", {}, box), el("td", {}, swatch(l.color)),
      el("td", {}, name), el("td", { className: "num" }, String(l.value)), volume);
  });
  byId("labels").replaceChildren(...rows);
  byId<HTMLSelectElement>("pen-label").replaceChildren(...display.labels.map((l) => el("option", { value: String(l.value), textContent: l.name })));
  byId("dl-seg").hidden = !(state.result?.dicomZip && display.dicom_seg);
  byId("dl-corrected-seg").hidden = !(state.result?.dicomZip && display.dicom_seg);
  selectTool(null);
  delete byId("seed").dataset.seeded;
  viewer.setOpacity(Number(byId<HTMLInputElement>("opacity").value));
  updateVolumes();
  byId("edited").textContent = "";
}

function updateVolumes(): void {
  for (const [value, ml] of viewer.volumes()) {
    const cell = document.querySelector<HTMLElement>(`[data-volume="${value}"]`);
    if (cell) cell.textContent = ml.toFixed(ml < 10 ? 3 : 1);
  }
}

function renderTools(): void {
  const buttons = [null, ...state.tools].map((tool) => {
    const button = el("button", { type: "button", className: "tool", textContent: tool ? tool.id : "view", title: tool ? tool.title : "View: click to move the crosshair, drag to change contrast" });
    button.dataset.tool = tool ? tool.id : "view";
    button.addEventListener("click", () => selectTool(tool));
    return button;
  });
  byId("tools").replaceChildren(...buttons);
}

function selectTool(tool: CorrectionTool | null): void {
  state.tool?.deactivate(viewer);
  state.tool = tool;
  if (tool) tool.activate(viewer, Number(byId<HTMLSelectElement>("pen-label").value), Number(byId<HTMLInputElement>("pen-size").value));
  for (const b of document.querySelectorAll<HTMLElement>("#tools .tool")) b.classList.toggle("active", b.dataset.tool === (tool ? tool.id : "view"));
}

function showLocation(location: Location): void {
  const label = state.result?.labels.find((l) => l.value === location.label);
  const line = byId("location");
  line.dataset.voxel = location.voxel.join(",");
  line.dataset.label = String(location.label);
  line.textContent = `voxel (${location.voxel.join(", ")}) · ${location.mm.map((v) => v.toFixed(1)).join(", ")} mm · intensity ${Number.isFinite(location.intensity) ? location.intensity.toFixed(1) : "–"} · ${label ? label.name : "background"}`;
}

async function downloadSeg(labels: Uint8Array | ArrayBuffer, suffix: string): Promise<void> {
  const result = state.result;
  if (!result?.dicomZip) return;
  const form = new FormData();
  form.append("file", result.dicomZip, result.dicomZip.name);
  form.append("labels", new Blob([labels as BlobPart]), "labels.nii.gz");
  message("Writing the DICOM SEG…");
  try {
    const seg = await api.bytes(`/v1/models/${encodeURIComponent(result.model)}/dicom-seg`, { method: "POST", body: form });
    download(seg, `${result.caseName}_${suffix}.dcm`, "application/dicom");
    message("DICOM SEG downloaded.", "ok");
  } catch (e) {
    message((e as Error).message, "error");
  }
}

function wireResult(): void {
  byId<HTMLInputElement>("opacity").addEventListener("input", (e) => viewer.setOpacity(Number((e.target as HTMLInputElement).value)));
  byId<HTMLSelectElement>("layout").addEventListener("change", (e) => viewer.setLayout((e.target as HTMLSelectElement).value as Layout));
  const reapply = () => selectTool(state.tool);
  byId("pen-label").addEventListener("change", reapply);
  byId("pen-size").addEventListener("input", reapply);
  const undoLast = () => void undo(viewer, state.prompts).then(() => {
    const button = byId("undo");
    button.dataset.done = String(Number(button.dataset.done ?? "0") + 1);
  }, (e: Error) => message(`Undo failed: ${e.message}`, "error"));
  byId("undo").addEventListener("click", undoLast);
  byId("seed").addEventListener("click", () => void seedLabel());
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z" && state.result) {
      e.preventDefault();
      undoLast();
    }
  });
  window.addEventListener("pagehide", () => state.prompts?.release());
  byId("dl-nifti").addEventListener("click", () => {
    if (state.result) download(state.result.labelMap, `${state.result.caseName}_${state.result.model}.nii.gz`, "application/gzip");
  });
  byId("dl-corrected").addEventListener("click", async () => {
    if (!state.result) return;
    download((await gzip(await viewer.maskBytes())) as BlobPart, `${state.result.caseName}_corrected.nii.gz`, "application/gzip");
  });
  byId("dl-seg").addEventListener("click", () => void (state.result && downloadSeg(state.result.labelMap, state.result.model)));
  byId("dl-corrected-seg").addEventListener("click", async () => void downloadSeg(await gzip(await viewer.maskBytes()), "corrected"));
  viewer.onLocation = showLocation;
  viewer.onEdit = (action) => {
    if (action === "draw") state.prompts?.stale();
    updateVolumes();
    byId("edited").textContent = "The mask was edited: download the corrected mask to keep the changes.";
  };
}

// ---- start ----------------------------------------------------------------------------------------------------------

function showView(name: "segment" | "models"): void {
  byId("view-segment").hidden = name !== "segment";
  byId("view-models").hidden = name !== "models";
  byId("tab-segment").classList.toggle("active", name === "segment");
  byId("tab-models").classList.toggle("active", name === "models");
}

async function main(): Promise<void> {
  await viewer.attach(byId<HTMLCanvasElement>("viewer"));
  renderTools();
  wireResult();
  byId("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    api.setToken(byId<HTMLInputElement>("token").value);
    byId<HTMLInputElement>("token").value = "";
    void connect();
  });
  byId("model").addEventListener("change", () => void chooseModel().catch((e) => message((e as Error).message, "error")));
  byId("run").addEventListener("click", () => void run());
  byId("cancel").addEventListener("click", () => {
    if (state.cancel) state.cancel.cancelled = true;
  });
  byId("tab-segment").addEventListener("click", () => showView("segment"));
  byId("tab-models").addEventListener("click", () => showView("models"));
  await connect();
}

void main().catch((e) => message(`The page failed to start: ${(e as Error).message}`, "error"));
