/** One segment: size history (snapshots), members with pagination, export, compute now. */
import { App, Button, Card, Col, Descriptions, Row, Space, Statistic, Table, Tag } from "antd";
import { DownloadOutlined, EditOutlined, ReloadOutlined } from "@ant-design/icons";
import { useMemo, useState } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api } from "../api/client";
import type { Members, Segment, Snapshot } from "../api/types";
import { Chart } from "../components/Chart";
import { PageHead } from "../components/PageHead";
import { Async, EmptyState } from "../components/States";
import { download } from "../download";
import { useI18n } from "../i18n";
import { useRole } from "../role";
import { useApi } from "../useApi";
import { RuleSummary } from "../rules/RuleSummary";

export function SegmentDetailPage() {
  const { segmentId = "" } = useParams();
  const i18n = useI18n();
  const { t, num, dateTime } = i18n;
  const { message } = App.useApp();
  const { can } = useRole();
  const navigate = useNavigate();
  const [page, setPage] = useState(1);
  const [busy, setBusy] = useState(false);
  const path = `/api/v1/segments/${encodeURIComponent(segmentId)}`;
  const seg = useApi((signal) => api.raw<Segment>("get", path, undefined, { signal }), [segmentId]);
  const history = useApi((signal) => api.raw<Snapshot[]>("get", `${path}/history`, undefined, { signal }), [segmentId]);
  const members = useApi((signal) => api.raw<Members>("get", `${path}/members`, undefined, { query: { limit: 20, offset: (page - 1) * 20 }, signal }), [segmentId, page]);
  const compute = async () => {
    setBusy(true);
    try {
      const r = await api.raw<{ size: number; entered: number; exited: number }>("post", `${path}/compute`);
      message.success(t("segment.computed", { size: num(r.size), entered: num(r.entered), exited: num(r.exited) }));
      seg.reload(); history.reload(); members.reload();
    } catch (e) {
      message.error((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const exportCsv = async (kind: "csv" | "call_list") => {
    try {
      await download(`${path}/export`, { kind, mask: true }, `${segmentId}-${kind}.csv`);
    } catch (e) {
      message.error((e as Error).message);
    }
  };
  const option = useMemo(() => {
    const h = history.data ?? [];
    return {
      tooltip: { trigger: "axis", valueFormatter: (v: number) => num(v) },
      legend: { top: 0 },
      grid: { left: 56, right: 24, top: 36, bottom: 28 },
      xAxis: { type: "category", data: h.map((s) => dateTime(s.as_of)) },
      yAxis: { type: "value", name: t("segment.customers"), minInterval: 1 },
      series: [
        { name: t("segment.size"), type: "line", data: h.map((s) => s.size), smooth: true },
        { name: t("segment.entered"), type: "bar", data: h.map((s) => s.entered), barMaxWidth: 16 },
        { name: t("segment.exited"), type: "bar", data: h.map((s) => -s.exited), barMaxWidth: 16 },
      ],
    };
  }, [history.data, t, num, dateTime]);
  return (
    <Async value={seg} rows={10}>
      {(s) => (
        <div>
          <Link to="/segments">← {t("segment.back")}</Link>
          <PageHead title={s.name} sub={s.description || undefined}
            extra={<Space wrap>
              {can("editAudience") && <Button icon={<EditOutlined />} onClick={() => navigate(`/segments/${segmentId}/edit`)}>{t("segment.edit")}</Button>}
              {can("editAudience") && <Button icon={<ReloadOutlined />} loading={busy} onClick={compute}>{t("segment.computeNow")}</Button>}
              {can("runModels") && <Button type="primary" icon={<DownloadOutlined />} onClick={() => exportCsv("csv")}>{t("segment.export")}</Button>}
              {can("runModels") && <Button onClick={() => exportCsv("call_list")}>{t("segment.exportCalls")}</Button>}
            </Space>} />
          <Row gutter={[16, 16]}>
            <Col xs={24} md={8}><Card><Statistic title={t("segment.currentSize")} value={s.size === null ? "—" : num(s.size)} /></Card></Col>
            <Col xs={24} md={8}><Card><Statistic title={t("segment.version")} value={s.version} /></Card></Col>
            <Col xs={24} md={8}><Card><Statistic title={t("segment.computedAt")} value={dateTime(s.computed_at)} valueStyle={{ fontSize: 18 }} /></Card></Col>
            <Col xs={24}>
              <Card title={t("segment.rule")}>
                <Descriptions size="small" column={1}><Descriptions.Item label={t("segment.mode")}>{s.realtime ? <Tag color="green">{t("segments.realtime")}</Tag> : <Tag>{t("segments.batch")}</Tag>}</Descriptions.Item></Descriptions>
                {s.rule ? <RuleSummary rule={s.rule} /> : null}
              </Card>
            </Col>
            <Col xs={24} xl={12}>
              <Card title={t("segment.history")}>
                <Async value={history}>{(h) => (h.length ? <Chart option={option} label={t("segment.history")} /> : <EmptyState text={t("segment.noHistory")} />)}</Async>
              </Card>
            </Col>
            <Col xs={24} xl={12}>
              <Card title={t("segment.members")}>
                <Table size="small" rowKey="profile_id" loading={members.loading} dataSource={members.data?.items ?? []}
                  locale={{ emptyText: t("segment.noMembers") }}
                  pagination={{ current: page, pageSize: 20, total: members.data?.total ?? 0, onChange: setPage, showSizeChanger: false, showTotal: (n) => t("common.total", { n: num(n) }) }}
                  columns={[
                    { title: t("segment.member"), dataIndex: "name", render: (v: string | null, r) => <Link to={`/customers/${r.profile_id}`}>{v || r.profile_id}</Link> },
                    { title: t("segment.phone"), dataIndex: "phone", render: (v: string | null) => v ?? "—" },
                    { title: t("segment.enteredAt"), dataIndex: "entered_at", render: (v: string | null) => dateTime(v) },
                  ]} />
              </Card>
            </Col>
          </Row>
        </div>
      )}
    </Async>
  );
}
