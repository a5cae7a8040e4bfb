// Correction tools. Each tool says how a pointer on the 2D views edits the mask of the selected label; the page
// lists the tools it is given and lets one be active at a time. The local brush and eraser edit NiiVue's drawing
// layer (the mask) in the page; the tools that ask a promptable model (clicks and boxes sent through the session API
// of an interactive model, interactive.ts) join the list when the server serves one.
import type { PromptSession } from "./interactive";
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

type Box = [[number, number], [number, number], [number, number]];
/** told when a prompt leaves (busy, with the prompt sent) and when its answer is pasted or it failed */
export type Report = (error: Error | null, busy: boolean, prompt?: { kind: string; where: number[] | Box; positive: boolean }) => void;

/** Points or boxes (positive or negative) for an interactive model: the answer refines the selected label. */
class PromptTool implements CorrectionTool {
  constructor(readonly id: string, readonly title: string, private readonly kind: "point" | "box", private readonly positive: boolean,
    private readonly session: PromptSession, private readonly report: Report) {}

  private send(label: number, where: number[] | Box): void {
    this.report(null, true, { kind: this.kind, where, positive: this.positive });
    this.session.interact(label, this.kind, where, this.positive).then(() => this.report(null, false), (e: Error) => this.report(e, false));
  }

  activate(viewer: Viewer, label: number): void {
    viewer.nv.setDrawingEnabled(false);
    if (this.kind === "point") {
      viewer.onClick = (voxel) => this.send(label, voxel);
      return;
    }
    viewer.boxDrag(true);
    viewer.onBox = (a, b) => {
      this.send(label, [0, 1, 2].map((d) => [Math.min(a[d], b[d]), Math.max(a[d], b[d]) + 1]) as Box);
    };
  }

  deactivate(viewer: Viewer): void {
    viewer.onClick = null;
    viewer.onBox = null;
    viewer.boxDrag(false);
  }
}

/** The prompt tools an interactive model with these interactions offers (points, and 2D boxes drawn on a slice). */
export function promptTools(supported: Record<string, boolean>, session: PromptSession,
  report: Report): CorrectionTool[] {
  const tools: CorrectionTool[] = [];
  if (supported.points) {
    tools.push(new PromptTool("point+", "Point +: click a voxel the selected label should include (interactive model)", "point", true, session, report),
      new PromptTool("point-", "Point −: click a voxel the selected label should leave out (interactive model)", "point", false, session, report));
  }
  if (supported.bbox2d) {
    tools.push(new PromptTool("box+", "Box +: drag a box around the object on a slice (interactive model)", "box", true, session, report),
      new PromptTool("box-", "Box −: drag a box the selected label should leave (interactive model)", "box", false, session, report));
  }
  return tools;
}

/** Undo the last edit; a prompt is undone on the server as well, so its session keeps matching the mask. */
export async function undo(viewer: Viewer, session: PromptSession | null): Promise<void> {
  const prompted = session ? await session.undo() : false;
  viewer.nv.drawUndo();
  if (session && !prompted) session.stale();
}
