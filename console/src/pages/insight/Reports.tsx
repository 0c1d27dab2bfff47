/** Reports: a funnel builder (pick track events in order, a conversion window and a period; a bar
 * chart and the step table), the cohort retention heat map and the acquisition-channel quality table
 * (POST /api/v1/insights/reports/funnel, POST …/reports/cohorts, GET …/reports/channels). */
import { Alert, Button, Card, DatePicker, Form, InputNumber, Select, Space, Table, Tabs, Typography } from "antd";
import dayjs, { type Dayjs } from "dayjs";
import { useMemo, useState } from "react";
import { api, ApiError } from "../../api/client";
import type { ChannelReport, CohortReport, EventName, FunnelReport } from "../../api/types";
import { Chart } from "../../components/Chart";
import { PageHead } from "../../components/PageHead";
import { Async, EmptyState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useApi } from "../../useApi";

export function ReportsPage() {
  const { t } = useI18n();
  const [tab, setTab] = useState("funnel");
  return (
    <div>
      <PageHead title={t("insight.reports.title")} sub={t("insight.reports.sub")} />
      <Tabs activeKey={tab} onChange={setTab} items={[
        { key: "funnel", label: t("insight.reports.funnel"), children: <FunnelTab /> },
        { key: "cohorts", label: t("insight.reports.cohorts"), children: <CohortTab /> },
        { key: "channels", label: t("insight.reports.channels"), children: <ChannelTab /> },
      ]} />
    </div>
  );
}

function FunnelTab() {
  const { t, num, lang } = useI18n();
  const events = useApi((signal) => api.raw<{ events: EventName[] }>("get", "/api/v1/console/events", undefined, { signal }));
  const [steps, setSteps] = useState<string[]>([]);
  const [windowDays, setWindowDays] = useState(7);
  const [range, setRange] = useState<[Dayjs, Dayjs]>([dayjs().subtract(90, "day"), dayjs()]);
  const [state, setState] = useState<{ report?: FunnelReport; error?: Error; loading: boolean }>({ loading: false });
  const run = async () => {
    setState({ loading: true });
    try {
      const report = await api.raw<FunnelReport>("post", "/api/v1/insights/reports/funnel", {
        steps: steps.map((event) => ({ event })), window_days: windowDays,
        start: range[0].startOf("day").toISOString(), end: range[1].endOf("day").toISOString(),
      });
      setState({ report, loading: false });
    } catch (e) {
      setState({ error: e as Error, loading: false });
    }
  };
  const r = state.report;
  const option = useMemo(() => r && ({
    tooltip: { trigger: "axis" },
    grid: { left: 56, right: 24, top: 24, bottom: 40 },
    xAxis: { type: "category", data: r.steps.map((s) => `${s.step}. ${s.event}`) },
    yAxis: { type: "value", name: t("insight.profiles") },
    series: [{ type: "bar", barMaxWidth: 90, data: r.steps.map((s) => s.profiles), label: { show: true, position: "top", formatter: (p: { dataIndex: number; value: number }) => `${num(p.value)} · ${num(r.steps[p.dataIndex].overall_pct, 1)}%` } }],
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }), [r, lang]);
  const dur = (s: number | null) => (s === null ? "—" : s < 3600 ? t("insight.reports.minutes", { n: num(s / 60, 0) }) : s < 172800 ? t("insight.reports.hours", { n: num(s / 3600, 1) }) : t("insight.reports.days", { n: num(s / 86400, 1) }));
  return (
    <Card>
      <Form layout="vertical" onFinish={run}>
        <Form.Item label={t("insight.reports.steps")} htmlFor="funnel-steps" extra={t("insight.reports.stepsHelp")}>
          <Select id="funnel-steps" mode="multiple" aria-label={t("insight.reports.steps")} value={steps} onChange={setSteps} loading={events.loading}
            placeholder={t("insight.reports.stepsPlaceholder")} maxCount={10}
            options={(events.data?.events ?? []).map((e) => ({ value: e.event, label: `${e.event} (${num(e.count)})` }))} />
        </Form.Item>
        <Space wrap align="end">
          <Form.Item label={t("insight.reports.window")} htmlFor="funnel-window">
            <InputNumber id="funnel-window" min={1} max={365} value={windowDays} onChange={(v) => setWindowDays(v ?? 7)} addonAfter={t("insight.reports.daysUnit")} />
          </Form.Item>
          <Form.Item label={t("insight.reports.range")}>
            <DatePicker.RangePicker value={range} allowClear={false} onChange={(v) => v && v[0] && v[1] && setRange([v[0], v[1]])}
              aria-label={t("insight.reports.range")} />
          </Form.Item>
          <Form.Item>
            <Button type="primary" htmlType="submit" loading={state.loading} disabled={steps.length < 2}>{t("insight.reports.build")}</Button>
          </Form.Item>
        </Space>
      </Form>
      {state.error && <Alert type="error" showIcon role="alert" message={state.error.message} description={state.error instanceof ApiError && state.error.field ? <span className="gk-mono">{state.error.field}</span> : undefined} />}
      {!r && !state.error && <EmptyState text={t("insight.reports.funnelHint")} />}
      {r && option && (
        <>
          <Chart option={option} height={320} label={t("insight.reports.funnel")} />
          <Table rowKey="step" size="small" pagination={false} dataSource={r.steps} data-testid="funnel-table" columns={[
            { title: "#", dataIndex: "step", width: 50 },
            { title: t("insight.reports.event"), dataIndex: "event" },
            { title: t("insight.profiles"), dataIndex: "profiles", align: "right", render: (n: number) => num(n) },
            { title: t("insight.reports.stepConv"), dataIndex: "conversion_pct", align: "right", render: (n: number) => `${num(n, 1)}%` },
            { title: t("insight.reports.overallConv"), dataIndex: "overall_pct", align: "right", render: (n: number) => `${num(n, 1)}%` },
            { title: t("insight.reports.median"), dataIndex: "median_seconds_from_previous", align: "right", render: dur },
          ]} />
        </>
      )}
    </Card>
  );
}

function CohortTab() {
  const { t, num } = useI18n();
  const [by, setBy] = useState<"first_order" | "first_event">("first_order");
  const [period, setPeriod] = useState<"month" | "week">("month");
  const rep = useApi((signal) => api.raw<CohortReport>("post", "/api/v1/insights/reports/cohorts",
    { cohort_by: by, activity: by === "first_order" ? "order" : "event", period, periods: 12 }, { signal }), [by, period]);
  return (
    <Card>
      <Space wrap style={{ marginBottom: 12 }}>
        <label htmlFor="cohort-by">{t("insight.reports.cohortBy")}</label>
        <Select id="cohort-by" style={{ width: 200 }} value={by} onChange={setBy} options={[
          { value: "first_order", label: t("insight.reports.firstOrder") }, { value: "first_event", label: t("insight.reports.firstEvent") }]} />
        <label htmlFor="cohort-period">{t("insight.reports.period")}</label>
        <Select id="cohort-period" style={{ width: 120 }} value={period} onChange={setPeriod} options={[
          { value: "month", label: t("insight.reports.month") }, { value: "week", label: t("insight.reports.week") }]} />
      </Space>
      <Async value={rep} rows={8}>
        {(c) => (c.cohorts.length === 0 ? <EmptyState text={t("insight.reports.noCohorts")} /> : (
          <>
          <Chart height={Math.max(260, 34 * c.cohorts.length + 90)} label={t("insight.reports.cohorts")} option={{
            // the 5th value: 1 on a cohort's last period when that period is still running (partial_last)
            tooltip: { formatter: (p: { data: [number, number, number | null, number, number] }) => `${c.cohorts[p.data[1]].cohort} +${p.data[0]}: ${p.data[2] === null ? "—" : `${num(p.data[2], 1)}%`} (${num(p.data[3])})${p.data[4] ? `<br/>* ${t("insight.reports.partial")}` : ""}` },
            grid: { left: 110, right: 24, top: 8, bottom: 48 },
            xAxis: { type: "category", name: t(period === "month" ? "insight.reports.monthsAfter" : "insight.reports.weeksAfter"), nameLocation: "middle", nameGap: 28, data: c.offsets.map(String), splitArea: { show: true } },
            yAxis: { type: "category", inverse: true, data: c.cohorts.map((x) => `${x.cohort} (${num(x.size)})`), splitArea: { show: true } },
            visualMap: { min: 0, max: 100, show: false, inRange: { color: ["#f7f9fc", "#9fc0e6", "#1f5fa8"] } },
            series: [{ type: "heatmap", data: c.cohorts.flatMap((x, yi) => x.pct.map((p, xi) => [xi, yi, p, x.counts[xi],
                x.partial_last && xi === x.periods_elapsed - 1 ? 1 : 0])).filter((d) => d[2] !== null),
              label: { show: true, fontSize: 11, formatter: (p: { data: [number, number, number, number, number] }) => `${Math.round(p.data[2])}${p.data[4] ? "*" : ""}` }, itemStyle: { borderColor: "#fff", borderWidth: 1 } }],
          }} />
          {c.cohorts.some((x) => x.partial_last) && <Typography.Text type="secondary">{t("insight.reports.partialNote")}</Typography.Text>}
          </>
        ))}
      </Async>
    </Card>
  );
}

function ChannelTab() {
  const { t, num, money, pct } = useI18n();
  const rep = useApi((signal) => api.raw<ChannelReport>("get", "/api/v1/insights/reports/channels", undefined, { signal }));
  return (
    <Card>
      <Async value={rep} rows={6}>
        {(c) => (
          <Table rowKey={(r) => `${r.source}/${r.medium}`} size="small" dataSource={c.channels} pagination={false} locale={{ emptyText: t("insight.reports.noChannels") }} columns={[
            { title: t("insight.reports.source"), dataIndex: "source", render: (s: string, r) => <span>{s} <Typography.Text type="secondary">/ {r.medium}</Typography.Text></span> },
            { title: t("insight.reports.customers"), dataIndex: "customers", align: "right", sorter: (a, b) => a.customers - b.customers, render: (n: number) => num(n) },
            { title: t("insight.reports.existing"), dataIndex: "existing_customers", align: "right", render: (n: number) => num(n) },
            { title: t("insight.reports.converted"), dataIndex: "conversion_pct", align: "right", sorter: (a, b) => (a.conversion_pct ?? -1) - (b.conversion_pct ?? -1), render: (n: number | null) => (n === null ? "—" : pct(n / 100)) },
            { title: t("insight.reports.orders"), dataIndex: "orders", align: "right", render: (n: number) => num(n) },
            { title: t("insight.reports.revenue"), dataIndex: "revenue", align: "right", sorter: (a, b) => a.revenue - b.revenue, render: (n: number) => money(n) },
            { title: t("insight.reports.perCustomer"), dataIndex: "revenue_per_customer", align: "right", render: (n: number | null) => money(n) },
            { title: t("insight.reports.avgClv"), dataIndex: "avg_clv", align: "right", render: (n: number | null) => money(n) },
            { title: "CAC", dataIndex: "cac", align: "right", render: (n: number | null) => money(n) },
            { title: "ROAS", dataIndex: "roas", align: "right", render: (n: number | null) => num(n, 2) },
          ]} />
        )}
      </Async>
    </Card>
  );
}
