/** The churn model: holdout metrics of every version (AUC, PR-AUC, Brier, top-decile lift), the lift
 * and cumulative-gain charts and the top drivers of a version, from
 * GET /api/v1/insights/models/churn/evaluation; "train" runs POST /api/v1/insights/churn/train. */
import { Card, Col, Row, Select, Space, Statistic, Table, Typography } from "antd";
import { useMemo, useState } from "react";
import { api, ApiError } from "../../api/client";
import type { ChurnVersion, Evaluation } from "../../api/types";
import { Chart } from "../../components/Chart";
import { ModelRun } from "../../components/ModelRun";
import { PageHead } from "../../components/PageHead";
import { Async, EmptyState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useApi } from "../../useApi";
import { featureLabel } from "../../labels";

export function ChurnPage() {
  const { t } = useI18n();
  const ev = useApi<Evaluation | null>(async (signal) => {
    try {
      return await api.raw<Evaluation>("get", "/api/v1/insights/models/churn/evaluation", undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  });
  return (
    <div>
      <PageHead title={t("insight.churn.title")} sub={t("insight.churn.sub")}
        extra={<ModelRun model="churn" run={() => api.raw("post", "/api/v1/insights/churn/train", {})} onDone={ev.reload} />} />
      <Async value={ev} rows={8}>{(e) => (e && e.versions.length ? <ChurnBody e={e} /> : <Card><EmptyState text={t("insight.churn.empty")} /></Card>)}</Async>
    </div>
  );
}

function ChurnBody({ e }: { e: Evaluation }) {
  const i18n = useI18n();
  const { t, num, pct, dateTime, lang } = i18n;
  const latest = Math.max(...e.versions.map((v) => v.version));
  const [picked, setPicked] = useState(latest);
  const v: ChurnVersion = e.versions.find((x) => x.version === picked) ?? e.versions[e.versions.length - 1];
  const lift = useMemo(() => ({
    tooltip: { trigger: "axis" },
    legend: { top: 0 },
    grid: { left: 48, right: 24, top: 36, bottom: 40 },
    xAxis: { type: "category", name: t("insight.churn.decile"), nameLocation: "middle", nameGap: 26, data: v.lift_table.map((r) => String(r.decile)) },
    yAxis: { type: "value", name: t("insight.churn.liftAxis") },
    series: [
      { type: "bar", name: t("insight.churn.lift"), data: v.lift_table.map((r) => +r.lift.toFixed(2)) },
      { type: "line", name: t("insight.churn.cumLift"), data: v.lift_table.map((r) => +r.cumulative_lift.toFixed(2)), markLine: { silent: true, symbol: "none", lineStyle: { type: "dashed", color: "#8a8f98" }, data: [{ yAxis: 1 }] } },
    ],
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }), [v, lang]);
  const gain = useMemo(() => {
    const total = v.lift_table.length ? v.lift_table[v.lift_table.length - 1].cumulative_customers : 0;
    const xs = [0, ...v.lift_table.map((r) => (total ? (100 * r.cumulative_customers) / total : 0))];
    return {
      tooltip: { trigger: "axis", valueFormatter: (x: number) => `${x.toFixed(1)}%` },
      legend: { top: 0 },
      grid: { left: 48, right: 24, top: 36, bottom: 40 },
      xAxis: { type: "value", name: t("insight.churn.targeted"), nameLocation: "middle", nameGap: 26, min: 0, max: 100, axisLabel: { formatter: "{value}%" } },
      yAxis: { type: "value", name: t("insight.churn.gainAxis"), min: 0, max: 100, axisLabel: { formatter: "{value}%" } },
      series: [
        { type: "line", name: t("insight.churn.gain"), smooth: false, data: xs.map((x, i) => [x, i === 0 ? 0 : v.lift_table[i - 1].cumulative_gain_pct]) },
        { type: "line", name: t("insight.churn.random"), symbol: "none", lineStyle: { type: "dashed" }, data: [[0, 0], [100, 100]] },
      ],
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [v, lang]);
  const drivers = useMemo(() => {
    const top = [...(v.feature_importance ?? [])].sort((a, b) => b.gain_share - a.gain_share).slice(0, 10).reverse();
    return {
      tooltip: { trigger: "axis", valueFormatter: (x: number) => `${x}%` },
      grid: { left: 170, right: 32, top: 8, bottom: 24 },
      xAxis: { type: "value", axisLabel: { formatter: "{value}%" } },
      yAxis: { type: "category", data: top.map((f) => featureLabel(i18n, f.feature)) },
      series: [{ type: "bar", name: t("insight.churn.importance"), data: top.map((f) => +(f.gain_share * 100).toFixed(1)) }],
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [v, lang]);
  return (
    <Row gutter={[16, 16]}>
      <Col xs={24}>
        <Card title={t("insight.churn.versions")}>
          <Table<ChurnVersion> rowKey="version" size="small" pagination={false} dataSource={[...e.versions].sort((a, b) => b.version - a.version)}
            rowClassName={(r) => (r.version === v.version ? "gk-row-picked" : "")}
            onRow={(r) => ({ onClick: () => setPicked(r.version) })}
            columns={[
              { title: t("insight.version", { v: "" }).trim(), dataIndex: "version", render: (n: number) => `v${n}` },
              { title: t("insight.fitted"), dataIndex: "created_at", render: (d: string) => dateTime(d) },
              { title: "AUC", dataIndex: "auc", align: "right", render: (x: number) => num(x, 3) },
              { title: "PR-AUC", dataIndex: "pr_auc", align: "right", render: (x: number) => num(x, 3) },
              { title: "Brier", dataIndex: "brier", align: "right", render: (x: number) => num(x, 3) },
              { title: t("insight.churn.topLift"), dataIndex: "top_decile_lift", align: "right", render: (x: number) => num(x, 2) },
              { title: t("insight.churn.baseRate"), dataIndex: "base_rate", align: "right", render: (x: number) => pct(x) },
              { title: t("insight.churn.labelled"), dataIndex: "labelled", align: "right", render: (x: number) => num(x) },
              { title: t("insight.churn.test"), dataIndex: "test", align: "right", render: (x: number) => num(x) },
            ]} />
        </Card>
      </Col>
      <Col xs={24}>
        <Space wrap size="large">
          <Space>
            <label htmlFor="churn-version"><Typography.Text strong>{t("insight.churn.showVersion")}</Typography.Text></label>
            <Select id="churn-version" aria-label={t("insight.churn.showVersion")} value={v.version} style={{ width: 120 }} onChange={setPicked}
              options={e.versions.map((x) => ({ value: x.version, label: `v${x.version}` }))} />
          </Space>
          <Statistic title="AUC" value={num(v.auc, 3)} />
          <Statistic title={t("insight.churn.topLift")} value={num(v.top_decile_lift, 2)} />
          <Statistic title={t("insight.churn.cutoff")} value={v.cutoff ? new Intl.DateTimeFormat(lang, { dateStyle: "medium" }).format(new Date(v.cutoff)) : "—"} />
        </Space>
      </Col>
      <Col xs={24} xl={12}><Card title={t("insight.churn.liftChart")}><Chart option={lift} height={300} label={t("insight.churn.liftChart")} /></Card></Col>
      <Col xs={24} xl={12}><Card title={t("insight.churn.gainChart")}><Chart option={gain} height={300} label={t("insight.churn.gainChart")} /></Card></Col>
      <Col xs={24}><Card title={t("insight.churn.drivers")} extra={<Typography.Text type="secondary">{t("insight.churn.driversNote")}</Typography.Text>}><Chart option={drivers} height={320} label={t("insight.churn.drivers")} /></Card></Col>
    </Row>
  );
}
