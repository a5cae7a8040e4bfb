// The NiiVue views: the image, the label map as NiiVue's drawing layer (so the brush, eraser and undo edit it in
// place), label colours and visibility, opacity, layouts, and the voxel under the crosshair.
import { DRAG_MODE, MULTIPLANAR_TYPE, Niivue, NVImage, SHOW_RENDER, SLICE_TYPE } from "@niivue/niivue";
import type { NiiVueLocation } from "@niivue/niivue";
import type { LabelInfo } from "./api";

export type Layout = "multiplanar" | "axial" | "coronal" | "sagittal" | "render";

const SLICE_TYPES: Record<Layout, SLICE_TYPE> = {
  multiplanar: SLICE_TYPE.MULTIPLANAR,
  axial: SLICE_TYPE.AXIAL,
  coronal: SLICE_TYPE.CORONAL,
  sagittal: SLICE_TYPE.SAGITTAL,
  render: SLICE_TYPE.RENDER,
};

export interface Location {
  /** voxel index (i, j, k) in the file's own order, as nibabel/ITK-SNAP show it */
  voxel: [number, number, number];
  mm: [number, number, number];
  label: number;
  intensity: number;
}

export class Viewer {
  readonly nv: Niivue;
  private labels: LabelInfo[] = [];
  private hidden = new Set<number>();
  private voxelMl = 0;
  onLocation: (location: Location) => void = () => {};
  onEdit: (action: "draw" | "undo") => void = () => {};
  /** a click (not a drag) on a 2D view: the voxel (i, j, k of the file) under the pointer */
  onClick: ((voxel: [number, number, number]) => void) | null = null;
  /** a drag on one 2D slice (with `boxDrag` on): its corners as voxels (i, j, k of the file) */
  onBox: ((start: [number, number, number], end: [number, number, number]) => void) | null = null;

  constructor() {
    this.nv = new Niivue({
      backColor: [0.07, 0.08, 0.1, 1],
      show3Dcrosshair: true,
      crosshairColor: [1, 1, 1, 0.45], // not a label colour (ITK-SNAP's label 1 is red, NiiVue's crosshair default)
      crosshairGap: 4,
      multiplanarShowRender: SHOW_RENDER.ALWAYS,
      multiplanarLayout: MULTIPLANAR_TYPE.GRID,
      isColorbar: false,
      logLevel: "error",
      loadingText: "",
      dragAndDropEnabled: false,
      penSize: 3,
      maxDrawUndoBitmaps: 32,
      isFilledPen: false,
    });
  }

  async attach(canvas: HTMLCanvasElement): Promise<void> {
    await this.nv.attachToCanvas(canvas);
    this.nv.onLocationChange = (data: unknown) => this.location(data as NiiVueLocation);
    this.nv.onDrawingChanged = (action: string) => {
      if (action === "draw" || action === "undo") this.onEdit(action);
    };
    this.nv.onMouseUp = (ui) => {
      // NiiVue passes the click's position too (its type leaves it out)
      const data = ui as typeof ui & { fracPos?: number[] };
      const frac = data.fracPos;
      if (!this.onClick || data.isDragging || data.mouseButtonRightDown || data.mouseButtonCenterDown || !frac || frac[0] < 0) return;
      this.onClick(this.voxelAt(Array.from(this.nv.scene.crosshairPos))); // the voxel the location line shows
    };
    this.nv.onDragRelease = (p) => {
      if (this.onBox && p.tileIdx >= 0 && p.axCorSag >= 0 && p.axCorSag <= 2) {
        this.onBox(this.voxelAt(Array.from(p.fracStart)), this.voxelAt(Array.from(p.fracEnd)));
      }
    };
  }

  /** The file's voxel (i, j, k) at a position of the scene (fractions), found as the location line finds it. */
  voxelAt(frac: number[]): [number, number, number] {
    const mm = this.nv.frac2mm(frac as unknown as Parameters<Niivue["frac2mm"]>[0], 0, true);
    const vox = this.nv.volumes[0].mm2vox(Array.from(mm));
    return [Math.round(vox[0]), Math.round(vox[1]), Math.round(vox[2])];
  }

  /** Left drags draw a box (for box prompts) instead of moving the crosshair. */
  boxDrag(on: boolean): void {
    this.nv.opts.dragModePrimary = on ? DRAG_MODE.roiSelection : DRAG_MODE.crosshair;
  }

  /** Show an image (its file's bytes; the name's ending tells the format), without labels (while predicting). */
  async showImage(image: ArrayBuffer, imageName: string): Promise<void> {
    const nv = this.nv;
    nv.closeDrawing();
    while (nv.volumes.length > 0) nv.removeVolume(nv.volumes[0]);
    const volume = await NVImage.loadFromFile({ file: new File([image], imageName), name: imageName });
    nv.addVolume(volume);
    const pix = volume.hdr!.pixDims;
    this.voxelMl = Math.abs(pix[1] * pix[2] * pix[3]) / 1000;
    nv.setDrawingEnabled(false);
  }

  /** Lay a label map (NIfTI bytes on the image's grid) over the image shown, as the editable mask. */
  async showLabels(labelMap: ArrayBuffer, labels: LabelInfo[]): Promise<void> {
    const map = await NVImage.loadFromFile({ file: new File([labelMap], "labels.nii.gz"), name: "labels.nii.gz" });
    if (!this.nv.loadDrawing(map)) {
      throw new Error("the label map's grid differs from the image's; the server sent a mask for another image");
    }
    this.labels = labels;
    this.hidden.clear();
    this.applyColors();
  }

  private applyColors(): void {
    const size = Math.max(1, ...this.labels.map((l) => l.value)) + 1;
    const cmap = { R: new Array<number>(size).fill(0), G: new Array<number>(size).fill(0), B: new Array<number>(size).fill(0),
      A: new Array<number>(size).fill(0), I: [...Array(size).keys()], labels: new Array<string>(size).fill("") };
    for (const l of this.labels) {
      [cmap.R[l.value], cmap.G[l.value], cmap.B[l.value]] = l.color;
      cmap.A[l.value] = this.hidden.has(l.value) ? 0 : 255;
      cmap.labels[l.value] = l.name;
    }
    // NiiVue takes a colormap object here as well as a name (its type says string only)
    this.nv.setDrawColormap(cmap as unknown as string);
  }

  setVisible(value: number, visible: boolean): void {
    if (visible) this.hidden.delete(value);
    else this.hidden.add(value);
    this.applyColors();
  }

  setOpacity(opacity: number): void {
    this.nv.setDrawOpacity(opacity);
  }

  setLayout(layout: Layout): void {
    this.nv.setSliceType(SLICE_TYPES[layout]);
  }

  /** Voxel counts per label value of the (possibly corrected) mask and the volume of one voxel in mL. */
  volumes(): Map<number, number> {
    const counts = new Map<number, number>();
    const bitmap = this.nv.drawBitmap;
    if (!bitmap) return counts;
    const hist = new Float64Array(256);
    for (let i = 0; i < bitmap.length; i++) hist[bitmap[i]]++;
    for (const l of this.labels) counts.set(l.value, hist[l.value] * this.voxelMl);
    return counts;
  }

  /** Move the crosshair to the voxel of label `value` nearest the label's centroid (false: the label is empty). */
  centerOn(value: number): boolean {
    const bitmap = this.nv.drawBitmap;
    const back = this.nv.volumes[0];
    if (!bitmap || !back) return false;
    const [, nx, ny] = back.dimsRAS!;
    const voxels: number[] = [];
    let sx = 0, sy = 0, sz = 0;
    for (let i = 0; i < bitmap.length; i++) {
      if (bitmap[i] !== value) continue;
      voxels.push(i);
      sx += i % nx;
      sy += Math.floor(i / nx) % ny;
      sz += Math.floor(i / (nx * ny));
    }
    if (voxels.length === 0) return false;
    const c = [sx / voxels.length, sy / voxels.length, sz / voxels.length];
    let best = voxels[0], bestDistance = Infinity;
    for (const i of voxels) {
      const d = (i % nx - c[0]) ** 2 + (Math.floor(i / nx) % ny - c[1]) ** 2 + (Math.floor(i / (nx * ny)) - c[2]) ** 2;
      if (d < bestDistance) [best, bestDistance] = [i, d];
    }
    const vox = [best % nx, Math.floor(best / nx) % ny, Math.floor(best / (nx * ny))];
    this.nv.scene.crosshairPos = this.nv.vox2frac(vox as unknown as Parameters<Niivue["vox2frac"]>[0]);
    this.nv.createOnLocationChange();
    this.nv.drawScene();
    return true;
  }

  /** The mask as NIfTI bytes on the image's grid (NiiVue writes it in the image file's orientation). */
  async maskBytes(): Promise<Uint8Array> {
    const bytes = await this.nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
    if (!(bytes instanceof Uint8Array)) throw new Error("no mask to save");
    return bytes;
  }

  private location(data: NiiVueLocation): void {
    const back = this.nv.volumes[0];
    const bitmap = this.nv.drawBitmap;
    if (!back || !data.values?.length) return;
    const ras = this.nv.frac2vox(data.frac);
    const dims = back.dimsRAS!;
    const index = Math.round(ras[0]) + Math.round(ras[1]) * dims[1] + Math.round(ras[2]) * dims[1] * dims[2];
    const v = data.values[0];
    this.onLocation({
      voxel: [Math.round(v.vox[0]), Math.round(v.vox[1]), Math.round(v.vox[2])],
      mm: [data.mm[0], data.mm[1], data.mm[2]],
      label: bitmap && index >= 0 && index < bitmap.length ? bitmap[index] : 0,
      intensity: Number(v.value),
    });
  }
}
