/** Sign-in by admin token. There are no user accounts yet: the token names the workspace. The
 * workspaces this browser signed in to are kept in localStorage, so the header can switch between
 * them. */
import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from "react";
import { api, configureClient } from "./api/client";

export interface WorkspaceSession {
  workspace_id: string;
  name: string;
  token: string;
  signed_in_at: string;
}
const KEY = "goldkey.sessions";
const CURRENT = "goldkey.current";

function load(): WorkspaceSession[] {
  try {
    const v = JSON.parse(localStorage.getItem(KEY) ?? "[]");
    return Array.isArray(v) ? v.filter((s) => s && s.workspace_id && s.token) : [];
  } catch {
    return [];
  }
}

interface SessionApi {
  sessions: WorkspaceSession[];
  current: WorkspaceSession | null;
  signIn: (token: string) => Promise<WorkspaceSession>;
  switchTo: (workspaceId: string) => void;
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

  const signOut = useCallback(
    (id: string) => {
      const list = load().filter((s) => s.workspace_id !== id);
      persist(list, list[0]?.workspace_id ?? null);
    },
    [persist],
  );

  // configured during render, not in an effect: the pages' effects (children) run before a
  // provider's effects, and their first requests need the token
  configureClient(
    () => current?.token ?? null,
    (token) => {
      const gone = load().find((s) => s.token === token);
      if (gone) {
        setExpired(gone.name);
        signOut(gone.workspace_id);
      }
    },
  );

  const value = useMemo<SessionApi>(
    () => ({
      sessions,
      current,
      expired,
      signIn: async (token: string) => {
        const ws = await api.get("/api/v1/workspace", { token });
        const s: WorkspaceSession = { workspace_id: ws.workspace_id, name: ws.name, token, signed_in_at: new Date().toISOString() };
        const list = [...load().filter((x) => x.workspace_id !== s.workspace_id), s];
        setExpired(null);
        persist(list, s.workspace_id);
        return s;
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
