// The server's REST API as the page uses it. The token lives in this object only (never in the URL, storage or
// cookies): reloading the page asks for it again.

export interface LabelInfo {
  name: string;
  value: number;
  color: [number, number, number];
}

export interface ModelSummary {
  name: string;
  dataset: string;
  configuration: string;
  trainer: string;
  channels: Record<string, string>;
  labels: Record<string, number>;
  folds: string[];
  device: string;
  backend: string;
  tta: boolean;
  dimension: number;
}

export interface ModelList {
  models: ModelSummary[];
  max_upload_bytes: number;
}

export interface DisplayInfo {
  name: string;
  labels: LabelInfo[];
  channels: Record<string, string>;
  dicom_zip: boolean;
  dicom_seg: boolean;
  report: boolean;
  max_label: number;
}

export interface JobInfo {
  id: string;
  status: "queued" | "running" | "done" | "failed" | "cancelled";
  progress: number;
  error: string | null;
  finished: number | null;
}

/** An answer other than 2xx, with the server's own explanation (its JSON `detail`). */
export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function explain(status: number, text: string): string {
  let detail = text;
  try {
    const parsed = JSON.parse(text) as { detail?: unknown };
    if (typeof parsed.detail === "string") detail = parsed.detail;
  } catch {
    // not JSON: keep the text
  }
  if (status === 401) return `The server refused the token (401): ${detail}`;
  if (status === 413) return `The upload is too large (413): ${detail}`;
  if (status === 429) return `The server is busy (429): ${detail}`;
  return detail || `the server answered ${status}`;
}

export class Api {
  private token: string | null = null;

  setToken(token: string | null): void {
    this.token = token && token.trim() ? token.trim() : null;
  }

  get hasToken(): boolean {
    return this.token !== null;
  }

  private headers(): Record<string, string> {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  /** The token's header, for a request the page sends itself (a release while the page closes). */
  authHeaders(): Record<string, string> {
    return this.headers();
  }

  /** A 2xx response (headers and body still unread), else an ApiError. */
  async response(path: string, init: RequestInit = {}): Promise<Response> {
    return this.request(path, init);
  }

  private async request(path: string, init: RequestInit = {}): Promise<Response> {
    let response: Response;
    try {
      response = await fetch(path, { ...init, headers: { ...this.headers(), ...(init.headers ?? {}) }, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, `cannot reach the server (${String(e)}); is nnseg serve still running?`);
    }
    if (!response.ok) throw new ApiError(response.status, explain(response.status, await response.text()));
    return response;
  }

  async json<T>(path: string, init: RequestInit = {}): Promise<T> {
    return (await (await this.request(path, init)).json()) as T;
  }

  async bytes(path: string, init: RequestInit = {}): Promise<ArrayBuffer> {
    return (await this.request(path, init)).arrayBuffer();
  }

  async text(path: string): Promise<string> {
    return (await this.request(path)).text();
  }

  /** POST a form with upload progress (fetch has none): resolves with the parsed JSON answer. */
  upload<T>(path: string, form: FormData, onProgress: (fraction: number) => void): Promise<T> {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      for (const [key, value] of Object.entries(this.headers())) xhr.setRequestHeader(key, value);
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText) as T);
        else reject(new ApiError(xhr.status, explain(xhr.status, xhr.responseText)));
      };
      xhr.onerror = () =>
        reject(new ApiError(0, "the upload was cut off by the server or the network; is the file within the server's upload limit?"));
      xhr.send(form);
    });
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll a job until it ends; `onProgress` gets its status and progress. Resolves with the final job. */
export async function waitForJob(api: Api, id: string, onProgress: (job: JobInfo) => void, signal: { cancelled: boolean }): Promise<JobInfo> {
  for (let delay = 150; ; delay = Math.min(delay * 1.5, 400)) {
    const job = await api.json<JobInfo>(`/v1/jobs/${encodeURIComponent(id)}`);
    onProgress(job);
    if (job.status === "done" || job.status === "failed" || job.status === "cancelled") return job;
    if (signal.cancelled) {
      await api.json(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    }
    await sleep(delay);
  }
}
