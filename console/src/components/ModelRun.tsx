/** The "run / refit" action of an insight page: the model's current version (from the registry),
 * a button that runs the model through its API, a progress line while it runs, and the API's error
 * (with the field it names) when the run is refused. */
import { Alert, Button, Progress, Space, Tag, Typography } from "antd";
import { ReloadOutlined } from "@ant-design/icons";
import { useEffect, useRef, useState } from "react";
import { api, ApiError } from "../api/client";
import type { ModelMeta } from "../api/types";
import { useI18n } from "../i18n";
import { useApi } from "../useApi";

export interface RunResult {
  version?: number;
  took_ms?: number;
}

/** The registry's latest version of ``name`` (null when the model never ran). */
export function useModelMeta(name: string) {
  return useApi<ModelMeta | null>(async (signal) => {
    try {
      return await api.raw<ModelMeta>("get", `/api/v1/insights/models/${encodeURIComponent(name)}`, undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  }, [name]);
}

export function ModelRun({ model, run, onDone }: { model: string; run: () => Promise<RunResult>; onDone: () => void }) {
  const { t, dateTime, num } = useI18n();
  const meta = useModelMeta(model);
  const [running, setRunning] = useState(false);
  const [elapsed, setElapsed] = useState(0);
  const [error, setError] = useState<Error | null>(null);
  const [last, setLast] = useState<RunResult | null>(null);
  const timer = useRef<number>();
  useEffect(() => () => window.clearInterval(timer.current), []);
  const go = async () => {
    setRunning(true);
    setError(null);
    setLast(null);
    const t0 = Date.now();
    setElapsed(0);
    timer.current = window.setInterval(() => setElapsed(Math.round((Date.now() - t0) / 1000)), 500);
    try {
      const r = await run();
      setLast(r);
      meta.reload();
      onDone();
    } catch (e) {
      setError(e as Error);
    } finally {
      window.clearInterval(timer.current);
      setRunning(false);
    }
  };
  const current = meta.data;
  return (
    <div className="gk-model-run" data-testid="model-run">
      <Space wrap align="center">
        {meta.error ? (
          <Typography.Text type="danger" data-testid="model-meta-error">
            {t("insight.metaFailed", { error: meta.error.message })} <Button size="small" type="link" onClick={meta.reload}>{t("insight.retry")}</Button>
          </Typography.Text>
        ) : meta.data === undefined ? null : current ? (
          <Typography.Text type="secondary" data-testid="model-version" data-version={current.version}>
            <Tag color="gold">{t("insight.version", { v: current.version })}</Tag>
            {t("insight.fittedAt", { when: dateTime(current.created_at) })}
          </Typography.Text>
        ) : (
          <Tag>{t("insight.neverRun")}</Tag>
        )}
        <Button type="primary" icon={<ReloadOutlined />} loading={running} onClick={go}>
          {current ? t("insight.refit") : t("insight.run")}
        </Button>
      </Space>
      {running && (
        <div role="status" style={{ marginTop: 8, maxWidth: 360 }}>
          <Progress percent={100} status="active" showInfo={false} strokeColor="#c8961e" />
          <Typography.Text type="secondary">{t("insight.running", { s: elapsed })}</Typography.Text>
        </div>
      )}
      {last && !running && (
        <Typography.Text type="success" role="status" style={{ display: "block", marginTop: 6 }}>
          {t("insight.ranVersion", { v: last.version ?? "—", ms: num(last.took_ms ?? 0) })}
        </Typography.Text>
      )}
      {error && (
        <Alert type="error" showIcon role="alert" style={{ marginTop: 8 }} message={t("insight.runFailed")}
          description={<>{error.message}{error instanceof ApiError && error.field ? <div className="gk-mono">{error.field}</div> : null}</>} />
      )}
    </div>
  );
}
