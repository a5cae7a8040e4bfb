// Correction tools. Each tool says how a pointer on the 2D views edits the mask of the selected label; the page
// lists the tools it is given and lets one be active at a time. The local brush and eraser edit NiiVue's drawing
// layer (the mask) in the page; a tool that asks a promptable model (clicks and boxes sent through the session API of
// an interactive model) can be added to the list later without changing the page around it.
import type { Viewer } from "./viewer";

export interface CorrectionTool {
  readonly id: string;
  readonly title: string;
  /** start editing `label` (a label value) with this tool; `size` is the brush diameter in voxels */
  activate(viewer: Viewer, label: number, size: number): void;
  deactivate(viewer: Viewer): void;
}

/** Paint the selected label (or erase to background) voxel by voxel with NiiVue's pen. */
class PenTool implements CorrectionTool {
  constructor(readonly id: string, readonly title: string, private readonly erase: boolean) {}

  activate(viewer: Viewer, label: number, size: number): void {
    viewer.nv.opts.penSize = size;
    viewer.nv.setPenValue(this.erase ? 0 : label, false);
    viewer.nv.setDrawingEnabled(true);
  }

  deactivate(viewer: Viewer): void {
    viewer.nv.setDrawingEnabled(false);
  }
}

/** The tools this page offers (in button order). */
export const LOCAL_TOOLS: CorrectionTool[] = [
  new PenTool("brush", "Brush: paint the selected label", false),
  new PenTool("eraser", "Eraser: set voxels back to background", true),
];

export function undo(viewer: Viewer): void {
  viewer.nv.drawUndo();
}
