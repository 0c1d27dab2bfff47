/** Download an authenticated file (the export endpoints need the Bearer token, so a plain link cannot). */
import { request } from "./api/client";

export async function download(path: string, query: Record<string, string | boolean>, fallbackName: string): Promise<void> {
  const res = await request("get", path, undefined, { query });
  const blob = await res.blob();
  const m = /filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") ?? "");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = m?.[1] ?? fallbackName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}
