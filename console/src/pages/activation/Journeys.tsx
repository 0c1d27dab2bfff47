/** The journey list: name, status, published version; "new journey" opens the canvas. */
import { Button, Card, Table } from "antd";
import { PlusOutlined } from "@ant-design/icons";
import { Link, useNavigate } from "react-router-dom";
import { api } from "../../api/client";
import type { JourneySummary } from "../../api/types";
import { PageHead } from "../../components/PageHead";
import { ErrorState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useRole } from "../../role";
import { useApi } from "../../useApi";
import { StatusTag } from "./Campaigns";

export function JourneysPage() {
  const { t, dateTime } = useI18n();
  const navigate = useNavigate();
  const { can } = useRole();
  const list = useApi((signal) => api.raw<JourneySummary[]>("get", "/api/v1/journeys", undefined, { signal }));
  return (
    <div>
      <PageHead title={t("journeys.title")} sub={t("journeys.sub")}
        extra={can("launch") && <Button type="primary" icon={<PlusOutlined />} onClick={() => navigate("/journeys/new")}>{t("journeys.new")}</Button>} />
      <Card>
        {list.error ? <ErrorState error={list.error} onRetry={list.reload} /> : (
          <Table<JourneySummary> rowKey="journey_id" loading={list.loading} dataSource={list.data ?? []}
            locale={{ emptyText: t("journeys.empty") }} pagination={{ pageSize: 20, hideOnSinglePage: true }}
            columns={[
              { title: t("journeys.name"), dataIndex: "name", render: (v: string, j) => <Link to={`/journeys/${j.journey_id}`}>{v}</Link> },
              { title: t("journeys.statusCol"), dataIndex: "status", render: (s: string) => <StatusTag status={s} /> },
              { title: t("journeys.version"), dataIndex: "version", align: "right", width: 120, render: (v: number) => (v ? `v${v}` : t("journeys.unpublished")) },
              { title: t("journeys.updated"), dataIndex: "updated_at", render: (v: string) => dateTime(v) },
            ]} />
        )}
      </Card>
    </div>
  );
}
