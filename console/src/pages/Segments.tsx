/** The segment list: name, current size, version, last computation. */
import { Button, Card, Input, Table, Tag, Typography } from "antd";
import { PlusOutlined } from "@ant-design/icons";
import { useState } from "react";
import { Link, useNavigate } from "react-router-dom";
import { api } from "../api/client";
import type { Segment } from "../api/types";
import { PageHead } from "../components/PageHead";
import { ErrorState } from "../components/States";
import { useI18n } from "../i18n";
import { useRole } from "../role";
import { useApi } from "../useApi";

export function SegmentsPage() {
  const { t, num, dateTime } = useI18n();
  const navigate = useNavigate();
  const { can } = useRole();
  const [q, setQ] = useState("");
  const segs = useApi((signal) => api.raw<Segment[]>("get", "/api/v1/segments", undefined, { signal }));
  const rows = (segs.data ?? []).filter((s) => !q || s.name.toLowerCase().includes(q.toLowerCase()));
  return (
    <div>
      <PageHead title={t("segments.title")} sub={t("segments.sub")}
        extra={can("editAudience") && <Button type="primary" icon={<PlusOutlined />} onClick={() => navigate("/segments/new")}>{t("segments.new")}</Button>} />
      <Card>
        {segs.error ? <ErrorState error={segs.error} onRetry={segs.reload} /> : (
          <>
            <Input.Search allowClear placeholder={t("segments.filter")} aria-label={t("segments.filter")} style={{ maxWidth: 320, marginBottom: 12 }} onChange={(e) => setQ(e.target.value)} />
            <Table<Segment> rowKey="segment_id" loading={segs.loading} dataSource={rows}
              pagination={{ pageSize: 20, hideOnSinglePage: true, showTotal: (n) => t("common.total", { n }) }}
              locale={{ emptyText: t("segments.empty") }}
              columns={[
                { title: t("segments.name"), dataIndex: "name", render: (v: string, s) => (
                  <div><Link to={`/segments/${s.segment_id}`}>{v}</Link>{s.description && <div><Typography.Text type="secondary" style={{ fontSize: 12 }}>{s.description}</Typography.Text></div>}</div>) },
                { title: t("segments.size"), dataIndex: "size", align: "right", sorter: (a, b) => (a.size ?? -1) - (b.size ?? -1), render: (v: number | null) => (v === null ? <Typography.Text type="secondary">{t("segments.notComputed")}</Typography.Text> : num(v)) },
                { title: t("segments.version"), dataIndex: "version", align: "right", width: 90 },
                { title: t("segments.mode"), dataIndex: "realtime", width: 110, render: (v: boolean) => (v ? <Tag color="green">{t("segments.realtime")}</Tag> : <Tag>{t("segments.batch")}</Tag>) },
                { title: t("segments.computedAt"), dataIndex: "computed_at", render: (v: string | null) => dateTime(v) },
              ]} />
          </>
        )}
      </Card>
    </div>
  );
}
