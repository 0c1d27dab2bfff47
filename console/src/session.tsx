/** Sign-in, by e-mail and password (a user: the workspaces granted to them, each with its role) or
 * by admin token (its one workspace, role admin). The workspaces this browser signed in to are kept
 * in localStorage, so the header can switch between them; a user's workspaces share the user's
 * session token, sent with the workspace in X-Goldkey-Workspace. */
import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from "react";
import { api, configureClient, request } from "./api/client";
import type { LoginResult } from "./api/types";
import { asRole, type Role } from "./role";

export interface WorkspaceSession {
  workspace_id: string;
  name: string;
  token: string;
  signed_in_at: string;
  /** The role in this workspace ("admin" for an admin token). */
  role: Role;
  /** "user": signed in with e-mail and password (token gks_…); "token": an admin token. */
  kind: "user" | "token";
  email?: string;
}
const KEY = "goldkey.sessions";
const CURRENT = "goldkey.current";

function load(): WorkspaceSession[] {
  try {
    const v = JSON.parse(localStorage.getItem(KEY) ?? "[]");
    return Array.isArray(v)
      ? v.filter((s) => s && s.workspace_id && s.token).map((s) => {
          const user = String(s.token).startsWith("gks_");
          // sessions stored before users existed are admin tokens
          return { ...s, kind: user ? "user" : "token", role: user ? asRole(s.role) : "admin" } as WorkspaceSession;
        })
      : [];
  } catch {
    return [];
  }
}

interface SessionApi {
  sessions: WorkspaceSession[];
  current: WorkspaceSession | null;
  signIn: (token: string) => Promise<WorkspaceSession>;
  /** Sign in with e-mail and password; adds every workspace granted. Throws ApiError, or
   * Error("no-workspace") when the user has a role in no workspace. */
  signInUser: (email: string, password: string) => Promise<WorkspaceSession>;
  switchTo: (workspaceId: string) => void;
  /** Sign out of a workspace: for a user, of all the user's workspaces (the session ends). */
  signOut: (workspaceId: string) => void;
  expired: string | null;
}
const Ctx = createContext<SessionApi | null>(null);

export function SessionProvider({ children }: { children: ReactNode }) {
  const [sessions, setSessions] = useState<WorkspaceSession[]>(load);
  const [currentId, setCurrentId] = useState<string | null>(() => localStorage.getItem(CURRENT));
  const [expired, setExpired] = useState<string | null>(null);
  const current = sessions.find((s) => s.workspace_id === currentId) ?? sessions[0] ?? null;

  const persist = useCallback((list: WorkspaceSession[], cur: string | null) => {
    localStorage.setItem(KEY, JSON.stringify(list));
    if (cur) localStorage.setItem(CURRENT, cur);
    else localStorage.removeItem(CURRENT);
    setSessions(list);
    setCurrentId(cur);
  }, []);

  const forget = useCallback(
    (token: string) => {
      const list = load().filter((s) => s.token !== token);
      persist(list, list[0]?.workspace_id ?? null);
    },
    [persist],
  );

  const signOut = useCallback(
    (id: string) => {
      const s = load().find((x) => x.workspace_id === id);
      if (!s) return;
      if (s.kind === "user") {
        // end the session on the server; the browser forgets it whatever the answer
        request("post", "/api/v1/auth/logout", undefined, { token: s.token }).catch(() => {});
        forget(s.token);
      } else {
        const list = load().filter((x) => x.workspace_id !== id);
        persist(list, list[0]?.workspace_id ?? null);
      }
    },
    [forget, persist],
  );

  // configured during render, not in an effect: the pages' effects (children) run before a
  // provider's effects, and their first requests need the token
  configureClient(
    () => current?.token ?? null,
    (token) => {
      const gone = load().find((s) => s.token === token);
      if (gone) {
        setExpired(gone.kind === "user" ? (gone.email ?? gone.name) : gone.name);
        forget(token);
      }
    },
    () => current?.workspace_id ?? null,
  );

  const value = useMemo<SessionApi>(
    () => ({
      sessions,
      current,
      expired,
      signIn: async (token: string) => {
        const ws = await api.get("/api/v1/workspace", { token });
        const s: WorkspaceSession = {
          workspace_id: ws.workspace_id, name: ws.name, token, signed_in_at: new Date().toISOString(), role: "admin", kind: "token",
        };
        const list = [...load().filter((x) => x.workspace_id !== s.workspace_id), s];
        setExpired(null);
        persist(list, s.workspace_id);
        return s;
      },
      signInUser: async (email: string, password: string) => {
        const r = await api.raw<LoginResult>("post", "/api/v1/auth/login", { email, password }, { token: "" });
        if (!r.grants.length) {
          request("post", "/api/v1/auth/logout", undefined, { token: r.token }).catch(() => {});
          throw new Error("no-workspace");
        }
        const at = new Date().toISOString();
        const mine: WorkspaceSession[] = r.grants.map((g) => ({
          workspace_id: g.workspace_id, name: g.name, token: r.token, signed_in_at: at, role: asRole(g.role), kind: "user", email: r.user.email,
        }));
        const ids = new Set(mine.map((s) => s.workspace_id));
        // the same user's older session, and other sign-ins to the same workspaces, give way
        const list = [...load().filter((x) => !ids.has(x.workspace_id) && !(x.kind === "user" && x.email === r.user.email)), ...mine];
        setExpired(null);
        const keep = current && ids.has(current.workspace_id) ? current.workspace_id : mine[0].workspace_id;
        persist(list, keep);
        return mine.find((s) => s.workspace_id === keep) ?? mine[0];
      },
      switchTo: (id: string) => persist(load(), id),
      signOut,
    }),
    [sessions, current, expired, persist, signOut],
  );
  return <Ctx.Provider value={value}>{children}</Ctx.Provider>;
}

export function useSession(): SessionApi {
  const v = useContext(Ctx);
  if (!v) throw new Error("useSession outside SessionProvider");
  return v;
}
