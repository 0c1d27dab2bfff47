/** Loading, error and empty states used on every page. */
import { Alert, Button, Empty, Skeleton } from "antd";
import type { ReactNode } from "react";
import { ApiError } from "../api/client";
import { useI18n } from "../i18n";
import type { Loaded } from "../useApi";

export function ErrorState({ error, onRetry }: { error: Error; onRetry?: () => void }) {
  const { t } = useI18n();
  const status = error instanceof ApiError ? error.status : 0;
  const title = status === 0 ? t("state.networkError") : status === 404 ? t("state.notFound") : t("state.error");
  return (
    <Alert type="error" showIcon message={title} description={error.message}
      action={onRetry && <Button size="small" onClick={onRetry}>{t("state.retry")}</Button>} />
  );
}

export function EmptyState({ text, children }: { text: string; children?: ReactNode }) {
  return <Empty image={Empty.PRESENTED_IMAGE_SIMPLE} description={text}>{children}</Empty>;
}

/** Render loading / error around a loaded value. */
export function Async<T>({ value, children, rows = 4 }: { value: Loaded<T>; children: (data: T) => ReactNode; rows?: number }) {
  if (value.error) return <ErrorState error={value.error} onRetry={value.reload} />;
  if (value.data === undefined) return <Skeleton active paragraph={{ rows }} />;
  return <>{children(value.data)}</>;
}
