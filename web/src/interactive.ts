// Refinement with an interactive (nnInteractive) model through the same session API nninteractive-client uses: claim a
// lease (heartbeat while it is held), send the scan and the selected label's mask (as the initial mask), then points
// and boxes at voxels of the scan's own grid (i, j, k of the file, as the Python client indexes a nibabel array). The
// answer (the changed box of the target buffer) is pasted into the selected label of NiiVue's drawing layer. Arrays
// travel in nnInteractive's packed format with nnseg's uncompressed codec 0 (`X-Array-Codec: raw`): browsers have no
// blosc2.
import { ApiError } from "./api";
import type { Api } from "./api";
import type { Viewer } from "./viewer";

export interface Capabilities {
  supported_interactions: Record<string, boolean>;
  license: string;
  supports_undo: boolean;
}

type Box = [[number, number], [number, number], [number, number]];

interface Answer {
  ran_prediction: boolean;
  bbox: Box | null;
  region: Uint8Array | null;
}

const RAW_HEADER = { "X-Array-Codec": "raw" };

/** nnInteractive's packed array (version 1) with codec 0: the raw little-endian bytes in one chunk. */
export function packRaw(data: Float32Array | Uint8Array, shape: number[]): Uint8Array {
  const name = data instanceof Float32Array ? "float32" : "uint8";
  const head = 8 + name.length + 8 * shape.length + 4 + 16;
  const out = new Uint8Array(head + data.byteLength);
  const view = new DataView(out.buffer);
  out.set([0x4e, 0x4e, 0x49, 0x41, 1, 0, shape.length, name.length]);
  for (let i = 0; i < name.length; i++) out[8 + i] = name.charCodeAt(i);
  let pos = 8 + name.length;
  for (const s of shape) view.setBigInt64((pos += 8) - 8, BigInt(s), true);
  view.setUint32(pos, 1, true);
  view.setBigUint64(pos + 4, BigInt(data.byteLength), true);
  view.setBigUint64(pos + 12, BigInt(data.byteLength), true);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), head);
  return out;
}

/** The bytes of a packed uint8/bool array with codec 0 (what the server answers a raw request with). */
export function unpackRaw(buf: ArrayBuffer): Uint8Array {
  const bytes = new Uint8Array(buf);
  const view = new DataView(buf);
  const [ndim, nameLength] = [bytes[6], bytes[7]];
  const name = String.fromCharCode(...bytes.subarray(8, 8 + nameLength));
  if (String.fromCharCode(...bytes.subarray(0, 4)) !== "NNIA" || bytes[5] !== 0 || (name !== "uint8" && name !== "bool")) {
    throw new Error(`the server answered an array the page cannot read (${name}, codec ${bytes[5]})`);
  }
  let pos = 8 + nameLength + 8 * ndim;
  const count = view.getUint32(pos, true);
  const parts: Uint8Array[] = [];
  pos += 4;
  for (let c = 0; c < count; c++) {
    const length = Number(view.getBigUint64(pos + 8, true));
    parts.push(bytes.subarray(pos + 16, pos + 16 + length));
    pos += 16 + length;
  }
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
}

/** The server's interactive model, or null when it serves none (its nnInteractive routes are absent). */
export async function interactiveCapabilities(api: Api): Promise<Capabilities | null> {
  try {
    const caps = await api.json<Capabilities>("/capabilities");
    return caps && typeof caps.supported_interactions === "object" ? caps : null;
  } catch {
    return null;
  }
}

/** One lease on the server, bound to the scan shown: its grid, the label it refines and the single-level undo. */
export class PromptSession {
  private lease: string | null = null;
  private heartbeat: number | undefined;
  private synced: number | null = null; // the label whose mask the server holds (null: it must be sent again)
  private undoable = false;
  private dims: [number, number, number] = [0, 0, 0];
  private rasOf: Int32Array = new Int32Array(0); // native voxel index -> index in NiiVue's RAS-ordered bitmap

  constructor(private readonly api: Api, private readonly viewer: Viewer) {}

  /** The page edited the mask another way (brush, eraser, an undo): the server's copy is stale. */
  stale(): void {
    this.synced = null;
    this.undoable = false;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { "X-Lease-Token": this.lease ?? "", ...RAW_HEADER, ...extra };
  }

  private async open(): Promise<void> {
    if (this.lease) return;
    const claim = await this.api.json<{ lease_token: string; liveness_timeout_seconds: number }>("/claim", { method: "POST" });
    this.lease = claim.lease_token;
    const every = Math.max(5, claim.liveness_timeout_seconds / 2) * 1000;
    this.heartbeat = window.setInterval(() => {
      void this.api.json("/heartbeat", { method: "POST", headers: this.headers() }).catch(() => this.drop());
    }, every);
    await this.sendImage();
  }

  private drop(): void {
    window.clearInterval(this.heartbeat);
    this.lease = null;
    this.synced = null;
    this.undoable = false;
  }

  /** Give the lease back (leaving the page, a new scan): the server frees the slot at once. */
  release(): void {
    if (!this.lease) return;
    const headers = { ...this.headers(), ...this.api.authHeaders() };
    this.drop();
    void fetch("/release", { method: "POST", headers, keepalive: true }).catch(() => undefined);
  }

  private async sendImage(): Promise<void> {
    const volume = this.viewer.nv.volumes[0];
    const hdr = volume.hdr!;
    const [ni, nj, nk] = [hdr.dims[1], hdr.dims[2], hdr.dims[3]];
    this.dims = [ni, nj, nk];
    const img = volume.img as ArrayLike<number>;
    const slope = Number.isFinite(hdr.scl_slope) && hdr.scl_slope !== 0 ? hdr.scl_slope : 1;
    const inter = Number.isFinite(hdr.scl_inter) ? hdr.scl_inter : 0;
    const image = new Float32Array(ni * nj * nk); // [1, i, j, k] in C order, as numpy holds nibabel's array
    for (let k = 0; k < nk; k++) for (let j = 0; j < nj; j++) for (let i = 0; i < ni; i++) {
      image[(i * nj + j) * nk + k] = img[i + ni * (j + nj * k)] * slope + inter;
    }
    this.rasOf = rasLookup(volume.dimsRAS!, volume.img2RASstep!, volume.img2RASstart!, ni * nj * nk);
    await this.api.json("/set_image", { method: "POST", headers: this.headers({ "X-Meta": "{}" }), body: packRaw(image, [1, ni, nj, nk]) as BlobPart });
    await this.api.json("/set_target_buffer", { method: "POST", headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ shape: this.dims, dtype: "uint8" }) });
  }

  /** Make the server hold the selected label's current mask (the initial mask; prompts start afresh). */
  private async sync(label: number): Promise<void> {
    await this.open();
    if (this.synced === label) return;
    const [ni, nj, nk] = this.dims;
    const bitmap = this.viewer.nv.drawBitmap!;
    const mask = new Uint8Array(ni * nj * nk);
    for (let k = 0; k < nk; k++) for (let j = 0; j < nj; j++) for (let i = 0; i < ni; i++) {
      mask[(i * nj + j) * nk + k] = bitmap[this.rasOf[i + ni * (j + nj * k)]] === label ? 1 : 0;
    }
    await this.prompt("/add_initial_seg_interaction", packRaw(mask, this.dims) as BlobPart, { "X-Meta": JSON.stringify({ run_prediction: false }) });
    this.synced = label;
    this.undoable = false;
  }

  /** "Correct with clicks": send the scan (claiming a lease if needed) and the selected label's mask as the initial
   * mask now, so the next point or box refines that label as it is (e.g. the automatic model's result). */
  async seed(label: number): Promise<void> {
    this.synced = null;
    try {
      await this.sync(label);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 410)) throw e;
      this.drop(); // the server closed an idle session: claim a new one and send everything again
      await this.sync(label);
    }
  }

  private async prompt(path: string, body: BodyInit, extra: Record<string, string>): Promise<Answer> {
    const response = await this.api.response(path, { method: "POST", headers: this.headers(extra), body });
    const meta = JSON.parse(response.headers.get("X-Meta") ?? "{}") as { ran_prediction: boolean; bbox: Box | null };
    const bytes = await response.arrayBuffer();
    return { ran_prediction: meta.ran_prediction, bbox: meta.bbox, region: meta.bbox && bytes.byteLength ? unpackRaw(bytes) : null };
  }

  private async send(label: number, kind: "point" | "box", where: number[] | Box, positive: boolean): Promise<Answer> {
    await this.sync(label);
    const body = kind === "point"
      ? { coordinates: where, include_interaction: positive, run_prediction: true }
      : { bbox_coords: where, include_interaction: positive, run_prediction: true };
    return this.prompt(`/add_${kind === "point" ? "point" : "bbox"}_interaction`, JSON.stringify(body), { "Content-Type": "application/json" });
  }

  /** A point (voxel i, j, k of the scan) or a half-open box, positive or negative, for `label`; pastes the answer. */
  async interact(label: number, kind: "point" | "box", where: number[] | Box, positive: boolean): Promise<void> {
    let answer: Answer;
    try {
      answer = await this.send(label, kind, where, positive);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 410)) throw e;
      this.drop(); // the server closed an idle session: claim a new one, send the scan and the mask again
      answer = await this.send(label, kind, where, positive);
    }
    this.paste(answer, label);
    this.viewer.nv.drawAddUndoBitmap();
    this.undoable = true;
  }

  private paste(answer: Answer, label: number): void {
    if (!answer.bbox || !answer.region) return;
    const [[i0, i1], [j0, j1], [k0, k1]] = answer.bbox;
    const [ni, nj] = this.dims;
    const bitmap = this.viewer.nv.drawBitmap!;
    let at = 0;
    for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) for (let k = k0; k < k1; k++) {
      const r = this.rasOf[i + ni * (j + nj * k)];
      if (answer.region[at++]) bitmap[r] = label;
      else if (bitmap[r] === label) bitmap[r] = 0;
    }
    this.viewer.nv.refreshDrawing(true);
  }

  /** Undo the last prompt on the server too (its undo is single-level); false: nothing of this session to undo. */
  async undo(): Promise<boolean> {
    if (!this.undoable || !this.lease) return false;
    this.undoable = false;
    await this.api.response("/undo", { method: "POST", headers: this.headers({ "Content-Type": "application/json" }), body: "{}" });
    return true;
  }
}

/** For each native voxel index, the index of the same voxel in NiiVue's RAS-ordered drawing bitmap. */
function rasLookup(dimsRAS: number[], step: number[], start: number[], count: number): Int32Array {
  const out = new Int32Array(count);
  let ras = 0;
  for (let z = 0; z < dimsRAS[3]; z++) for (let y = 0; y < dimsRAS[2]; y++) for (let x = 0; x < dimsRAS[1]; x++) {
    out[start[0] + x * step[0] + start[1] + y * step[1] + start[2] + z * step[2]] = ras++;
  }
  return out;
}
