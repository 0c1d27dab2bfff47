/** The typed API client. Paths and bodies come from the OpenAPI schema (docs/openapi.json, turned
 * into src/api/schema.d.ts by openapi-typescript at build time); the admin token of the current
 * workspace is sent as a Bearer token. */
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type ProfilePublic = Schemas["ProfilePublic"];
export type WorkspacePublic = Schemas["WorkspacePublic"];
export type TraitPublic = Schemas["TraitPublic"];
export type IdentityRules = Schemas["IdentityRules"];

export class ApiError extends Error {
  constructor(
    message: string,
    public status: number,
    public field: string | null = null,
  ) {
    super(message);
  }
}

let tokenProvider: () => string | null = () => null;
let workspaceProvider: () => string | null = () => null;
let onUnauthorized: (token: string) => void = () => {};

/** ``getWorkspace``: the workspace a user's session token (gks_…) acts in, sent as X-Goldkey-Workspace. */
export function configureClient(getToken: () => string | null, unauthorized: (token: string) => void,
  getWorkspace: () => string | null = () => null) {
  tokenProvider = getToken;
  workspaceProvider = getWorkspace;
  onUnauthorized = unauthorized;
}

type Method = "get" | "post" | "put" | "patch" | "delete";
type PathsWith<M extends Method> = { [P in keyof paths]: paths[P] extends Record<M, object> ? P : never }[keyof paths];
type Json<R> = R extends { content: { "application/json": infer J } } ? J : unknown;
type Ok<Op> = Op extends { responses: infer Rs }
  ? Rs extends { 200: infer R }
    ? Json<R>
    : Rs extends { 201: infer R }
      ? Json<R>
      : unknown
  : unknown;
type BodyOf<Op> = Op extends { requestBody: { content: { "application/json": infer B } } } ? B : never;

export interface CallOptions {
  path?: Record<string, string>;
  query?: Record<string, string | number | boolean | undefined>;
  token?: string;
  /** With ``token``: the workspace to name in X-Goldkey-Workspace (a user's session token). */
  workspace?: string;
  signal?: AbortSignal;
}

function url(template: string, opts: CallOptions): string {
  let u = template.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(opts.path?.[k] ?? ""));
  const q = Object.entries(opts.query ?? {}).filter(([, v]) => v !== undefined && v !== "");
  if (q.length) u += "?" + new URLSearchParams(q.map(([k, v]) => [k, String(v)])).toString();
  return u;
}

export async function request(method: string, path: string, body: unknown, opts: CallOptions = {}): Promise<Response> {
  const token = opts.token ?? tokenProvider();
  const headers: Record<string, string> = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const workspace = opts.token ? opts.workspace : workspaceProvider();
  if (workspace && token?.startsWith("gks_")) headers["X-Goldkey-Workspace"] = workspace;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res: Response;
  try {
    res = await fetch(url(path, opts), {
      method: method.toUpperCase(),
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: opts.signal,
    });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(`network error: ${(e as Error).message}`, 0);
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    let field: string | null = null;
    try {
      const b = await res.json();
      message = b.error ?? b.detail ?? message;
      field = b.field ?? null;
    } catch {
      /* not JSON */
    }
    if (res.status === 401 && token && !opts.token) onUnauthorized(token);
    throw new ApiError(message, res.status, field);
  }
  return res;
}

async function json<T>(res: Response): Promise<T> {
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const api = {
  get: async <P extends PathsWith<"get">>(path: P, opts?: CallOptions) =>
    json<Ok<paths[P]["get"]>>(await request("get", path as string, undefined, opts)),
  post: async <P extends PathsWith<"post">>(path: P, body: BodyOf<paths[P]["post"]> | object, opts?: CallOptions) =>
    json<Ok<paths[P]["post"]>>(await request("post", path as string, body, opts)),
  patch: async <P extends PathsWith<"patch">>(path: P, body: BodyOf<paths[P]["patch"]>, opts?: CallOptions) =>
    json<Ok<paths[P]["patch"]>>(await request("patch", path as string, body, opts)),
  /** A route the generated schema does not list yet (e.g. the console's own aggregates). */
  raw: async <T>(method: Method, path: string, body?: unknown, opts?: CallOptions) =>
    json<T>(await request(method, path, body, opts)),
};
