/** A small data-loading hook: loading / error / data, reloaded when the workspace or the deps change. */
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError } from "./api/client";
import { useSession } from "./session";

export interface Loaded<T> {
  data?: T;
  error: ApiError | Error | null;
  loading: boolean;
  reload: () => void;
}

export function useApi<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[] = []): Loaded<T> {
  const { current } = useSession();
  const [state, setState] = useState<{ data?: T; error: Error | null; loading: boolean }>({ loading: true, error: null });
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    const ctl = new AbortController();
    setState((s) => ({ data: s.data, error: null, loading: true }));
    loadRef
      .current(ctl.signal)
      .then((data) => !ctl.signal.aborted && setState({ data, error: null, loading: false }))
      .catch((error: Error) => !ctl.signal.aborted && error.name !== "AbortError" && setState({ error, loading: false }));
    return () => ctl.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [current?.workspace_id, tick, ...deps]);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  return { ...state, reload };
}
