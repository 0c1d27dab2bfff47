/** CLV: the distribution of predicted customer lifetime value (histogram) and its deciles, from
 * GET /api/v1/insights/clv/summary; "run / refit" runs POST /api/v1/insights/clv/run. */
import { Card, Col, Descriptions, Row, Table } from "antd";
import { useMemo } from "react";
import { api, ApiError } from "../../api/client";
import type { CLVSummary } from "../../api/types";
import { Chart } from "../../components/Chart";
import { ModelRun } from "../../components/ModelRun";
import { PageHead } from "../../components/PageHead";
import { Async, EmptyState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useApi } from "../../useApi";

export function ClvPage() {
  const { t } = useI18n();
  const sum = useApi<CLVSummary | null>(async (signal) => {
    try {
      return await api.raw<CLVSummary>("get", "/api/v1/insights/clv/summary", undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  });
  return (
    <div>
      <PageHead title={t("insight.clv.title")} sub={t("insight.clv.sub")}
        extra={<ModelRun model="clv" run={() => api.raw("post", "/api/v1/insights/clv/run", {})} onDone={sum.reload} />} />
      <Async value={sum} rows={8}>{(s) => (s ? <ClvBody s={s} /> : <Card><EmptyState text={t("insight.clv.empty")} /></Card>)}</Async>
    </div>
  );
}

function ClvBody({ s }: { s: CLVSummary }) {
  const { t, num, money, pct, lang } = useI18n();
  const hist = useMemo(() => ({
    tooltip: { trigger: "axis" },
    grid: { left: 56, right: 16, top: 24, bottom: 56 },
    xAxis: { type: "category", name: t("insight.clv.value"), nameLocation: "middle", nameGap: 36, data: s.distribution.histogram.map((b) => `${num(b.from, 0)}–${num(b.to, 0)}`) },
    yAxis: { type: "value", name: t("insight.profiles") },
    series: [{ type: "bar", name: t("insight.profiles"), data: s.distribution.histogram.map((b) => b.profiles), barCategoryGap: "8%" }],
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }), [s, lang]);
  const deciles = useMemo(() => ({
    tooltip: { trigger: "axis" },
    grid: { left: 56, right: 48, top: 32, bottom: 40 },
    legend: { top: 0 },
    xAxis: { type: "category", name: t("insight.clv.decile"), data: s.distribution.deciles.map((d) => String(d.decile)) },
    yAxis: [{ type: "value", name: t("insight.clv.mean") }, { type: "value", name: t("insight.clv.shareAxis"), max: 100, axisLabel: { formatter: "{value}%" } }],
    series: [
      { type: "bar", name: t("insight.clv.mean"), data: s.distribution.deciles.map((d) => Math.round(d.mean * 100) / 100) },
      { type: "line", name: t("insight.clv.share"), yAxisIndex: 1, data: s.distribution.deciles.map((d) => Math.round(d.share * 1000) / 10) },
    ],
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }), [s, lang]);
  const total = s.distribution.deciles.reduce((a, d) => a + d.profiles, 0);
  return (
    <Row gutter={[16, 16]}>
      <Col xs={24}>
        <Card size="small">
          <Descriptions size="small" column={{ xs: 1, md: 4 }} items={[
            { key: "v", label: t("insight.model"), children: `CLV v${s.version}` },
            { key: "a", label: t("insight.asOf"), children: s.as_of ? new Intl.DateTimeFormat(lang, { dateStyle: "medium" }).format(new Date(s.as_of)) : "—" },
            { key: "p", label: t("insight.profiles"), children: num(total) },
            { key: "h", label: t("insight.clv.period"), children: s.period ?? "—" },
          ]} />
        </Card>
      </Col>
      <Col xs={24} xl={13}><Card title={t("insight.clv.histogram")}><Chart option={hist} height={320} label={t("insight.clv.histogram")} /></Card></Col>
      <Col xs={24} xl={11}><Card title={t("insight.clv.deciles")}><Chart option={deciles} height={320} label={t("insight.clv.deciles")} /></Card></Col>
      <Col xs={24}>
        <Card title={t("insight.clv.decileTable")}>
          <Table rowKey="decile" size="small" pagination={false} dataSource={s.distribution.deciles} columns={[
            { title: t("insight.clv.decile"), dataIndex: "decile" },
            { title: t("insight.profiles"), dataIndex: "profiles", align: "right", render: (n: number) => num(n) },
            { title: t("insight.clv.min"), dataIndex: "min", align: "right", render: (n: number) => money(n) },
            { title: t("insight.clv.max"), dataIndex: "max", align: "right", render: (n: number) => money(n) },
            { title: t("insight.clv.mean"), dataIndex: "mean", align: "right", render: (n: number) => money(n) },
            { title: t("insight.clv.share"), dataIndex: "share", align: "right", render: (n: number) => pct(n) },
          ]} />
        </Card>
      </Col>
    </Row>
  );
}
