/** Customer clusters: one card per cluster with its size, description (zh / en), typical values and
 * top categories, and "save as segment" (POST /api/v1/insights/clusters/{c}/segment); the silhouette
 * score per k that chose the number of clusters. From GET /api/v1/insights/clusters. */
import { App, Button, Card, Col, Descriptions, Progress, Row, Tag, Typography } from "antd";
import { UsergroupAddOutlined } from "@ant-design/icons";
import { useMemo, useState } from "react";
import { useNavigate } from "react-router-dom";
import { api, ApiError } from "../../api/client";
import type { Cluster, Clusters } from "../../api/types";
import { Chart, PALETTE } from "../../components/Chart";
import { ModelRun } from "../../components/ModelRun";
import { PageHead } from "../../components/PageHead";
import { Async, EmptyState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useApi } from "../../useApi";

export function ClustersPage() {
  const { t } = useI18n();
  const cl = useApi<Clusters | null>(async (signal) => {
    try {
      return await api.raw<Clusters>("get", "/api/v1/insights/clusters", undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  });
  return (
    <div>
      <PageHead title={t("insight.clusters.title")} sub={t("insight.clusters.sub")}
        extra={<ModelRun model="clusters" run={() => api.raw("post", "/api/v1/insights/clusters/run", {})} onDone={cl.reload} />} />
      <Async value={cl} rows={8}>{(c) => (c && c.clusters.length ? <Body c={c} /> : <Card><EmptyState text={t("insight.clusters.empty")} /></Card>)}</Async>
    </div>
  );
}

const MEANS = ["revenue", "order_count", "avg_order_value", "recency_days", "avg_days_between_orders"];

function Body({ c }: { c: Clusters }) {
  const { t, num, lang } = useI18n();
  const sil = useMemo(() => {
    const ks = Object.keys(c.metrics.silhouette).sort((a, b) => Number(a) - Number(b));
    return {
      tooltip: { trigger: "axis" },
      grid: { left: 48, right: 16, top: 16, bottom: 32 },
      xAxis: { type: "category", name: "k", data: ks },
      yAxis: { type: "value", scale: true },
      series: [{ type: "line", data: ks.map((k) => ({ value: c.metrics.silhouette[k], symbolSize: Number(k) === c.k ? 14 : 6 })) }],
    };
  }, [c]);
  return (
    <Row gutter={[16, 16]}>
      <Col xs={24} xl={8}>
        <Card title={t("insight.clusters.silhouette")}>
          <Chart option={sil} height={220} label={t("insight.clusters.silhouette")} />
          <Typography.Paragraph type="secondary">{t("insight.clusters.chosen", { k: c.k, n: num(c.metrics.customers) })}</Typography.Paragraph>
        </Card>
      </Col>
      <Col xs={24} xl={16}>
        <Row gutter={[16, 16]}>
          {c.clusters.map((x, i) => <Col xs={24} md={12} key={x.cluster}><ClusterCard x={x} color={PALETTE[i % PALETTE.length]} lang={lang} /></Col>)}
        </Row>
      </Col>
    </Row>
  );
}

function ClusterCard({ x, color, lang }: { x: Cluster; color: string; lang: string }) {
  const { t, num, money, pct } = useI18n();
  const { message } = App.useApp();
  const navigate = useNavigate();
  const [saving, setSaving] = useState(false);
  const save = async () => {
    setSaving(true);
    try {
      const seg = await api.raw<{ segment_id: string }>("post", `/api/v1/insights/clusters/${encodeURIComponent(x.cluster)}/segment`, {});
      message.success(t("insight.clusters.saved"));
      navigate(`/segments/${seg.segment_id}`);
    } catch (e) {
      message.error((e as Error).message);
    } finally {
      setSaving(false);
    }
  };
  const fmt = (k: string, v: number) => (k === "revenue" || k === "avg_order_value" ? money(v) : num(v, 1));
  const cats = Object.entries(x.top_categories).sort((a, b) => b[1] - a[1]).slice(0, 4);
  return (
    <Card className="gk-cluster" data-testid="cluster-card" style={{ borderTop: `4px solid ${color}` }}
      title={<span>{t("insight.clusters.cluster", { c: x.cluster })} <Tag>{num(x.size)} · {pct(x.share)}</Tag></span>}
      extra={<Button size="small" icon={<UsergroupAddOutlined />} loading={saving} onClick={save}>{t("insight.clusters.saveSegment")}</Button>}>
      <Typography.Paragraph>{lang === "zh-CN" ? x.description_zh : x.description_en}</Typography.Paragraph>
      <Descriptions size="small" column={1} items={MEANS.filter((k) => k in x.means).map((k) => ({ key: k, label: t(`insight.features.${k}`), children: fmt(k, x.means[k]) }))} />
      {cats.length > 0 && (
        <div style={{ marginTop: 8 }}>
          <Typography.Text type="secondary">{t("insight.clusters.categories")}</Typography.Text>
          {cats.map(([k, v]) => (
            <div key={k} style={{ display: "flex", alignItems: "center", gap: 8 }}>
              <span style={{ width: 90 }} className="gk-mono">{k}</span>
              <Progress percent={Math.round(v * 100)} size="small" strokeColor={color} aria-label={k} />
            </div>
          ))}
        </div>
      )}
    </Card>
  );
}
