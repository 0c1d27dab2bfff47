/** The overview dashboard: KPIs and charts from /api/v1/console/overview and the RFM tags' coverage. */
import { Card, Col, Row, Segmented, Statistic, Typography } from "antd";
import { useMemo, useState } from "react";
import { api, ApiError } from "../api/client";
import type { Coverage, Overview } from "../api/types";
import { Chart } from "../components/Chart";
import { PageHead } from "../components/PageHead";
import { Async, EmptyState, ErrorState } from "../components/States";
import { useI18n, type I18n } from "../i18n";
import { useApi } from "../useApi";

async function coverage(name: string, signal: AbortSignal): Promise<Coverage | null> {
  try {
    return await api.raw<Coverage>("get", `/api/v1/tags/${encodeURIComponent(name)}/coverage`, undefined, { signal });
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null; // the tag does not exist (RFM never run)
    throw e;
  }
}

export function OverviewPage() {
  const i18n = useI18n();
  const { t } = i18n;
  const [days, setDays] = useState(30);
  const ov = useApi((signal) => api.raw<Overview>("get", "/api/v1/console/overview", undefined, { query: { days }, signal }), [days]);
  const tiers = useApi((signal) => coverage("rfm_value_tier", signal));
  const groups = useApi((signal) => coverage("rfm_group", signal));
  return (
    <div>
      <PageHead
        title={t("overview.title")}
        sub={ov.data ? t("overview.asOf", { when: i18n.dateTime(ov.data.as_of), last: i18n.dateTime(ov.data.last_activity_at) }) : undefined}
        extra={
          <Segmented aria-label={t("overview.window")} value={days} onChange={(v) => setDays(Number(v))}
            options={[30, 90, 180, 365].map((d) => ({ value: d, label: t("overview.lastDays", { n: d }) }))} />
        }
      />
      <Async value={ov} rows={8}>{(o) => <Kpis o={o} i18n={i18n} />}</Async>
      <Row gutter={[16, 16]} style={{ marginTop: 16 }}>
        <Col xs={24} xl={14}>
          <Card title={t("overview.revenueChart")} extra={ov.data?.currency && <Typography.Text type="secondary">{t("overview.unitCurrency", { c: ov.data.currency })}</Typography.Text>}>
            <Async value={ov}>{(o) => (o.orders_all_time === 0 ? <EmptyState text={t("overview.noOrders")} /> : <RevenueChart o={o} i18n={i18n} />)}</Async>
          </Card>
        </Col>
        <Col xs={24} xl={10}>
          <Card title={t("overview.newReturning", { n: days })}>
            <Async value={ov}>{(o) => (o.active === 0 ? <EmptyState text={t("overview.noActive", { n: days })} /> : <NewReturningChart o={o} i18n={i18n} />)}</Async>
          </Card>
        </Col>
        <Col xs={24}>
          <Card title={t("overview.dailyActive", { n: days })}>
            <Async value={ov}>{(o) => (o.daily_active.some((d) => d.active > 0) ? <DailyChart o={o} i18n={i18n} /> : <EmptyState text={t("overview.noActive", { n: days })} />)}</Async>
          </Card>
        </Col>
        <Col xs={24} xl={10}>
          <Card title={t("overview.valueTiers")}>
            <TagChart value={tiers} i18n={i18n} prefix="rfm.tier" kind="pie" />
          </Card>
        </Col>
        <Col xs={24} xl={14}>
          <Card title={t("overview.rfmGroups")}>
            <TagChart value={groups} i18n={i18n} prefix="rfm.group" kind="bar" />
          </Card>
        </Col>
      </Row>
    </div>
  );
}

function Kpis({ o, i18n }: { o: Overview; i18n: I18n }) {
  const { t, num, money, pct } = i18n;
  const cards = [
    { key: "customers", title: t("overview.customers"), value: num(o.customers), foot: t("overview.customersSplit", { existing: num(o.customers_existing), fresh: num(o.customers_new) }) },
    { key: "active", title: t("overview.active", { n: o.window_days }), value: num(o.active), foot: t("overview.activeShare", { p: pct(o.customers ? o.active / o.customers : 0) }) },
    { key: "returning", title: t("overview.newVsReturning"), value: `${num(o.active_new)} / ${num(o.active_returning)}`, foot: t("overview.newVsReturningFoot") },
    { key: "revenue", title: t("overview.revenue", { n: o.window_days }), value: money(o.revenue, o.currency), foot: t("overview.ordersBuyers", { orders: num(o.orders), buyers: num(o.buyers) }) },
    { key: "all", title: t("overview.revenueAll"), value: money(o.revenue_all_time, o.currency), foot: t("overview.ordersAll", { orders: num(o.orders_all_time) }) },
  ];
  return (
    <Row gutter={[16, 16]}>
      {cards.map((c) => (
        <Col key={c.key} flex="1 1 220px">
          <Card className="gk-kpi" data-testid={`kpi-${c.key}`} style={{ height: "100%" }}>
            <Statistic title={c.title} value={c.value} />
            <Typography.Text type="secondary" style={{ fontSize: 12 }}>{c.foot}</Typography.Text>
          </Card>
        </Col>
      ))}
    </Row>
  );
}

function RevenueChart({ o, i18n }: { o: Overview; i18n: I18n }) {
  const { t, money, num, lang } = i18n;
  const option = useMemo(() => {
    const months = o.monthly_revenue.map((m) => new Intl.DateTimeFormat(lang, { year: "2-digit", month: "short" }).format(new Date(m.month + "-01T00:00:00Z")));
    return {
      tooltip: { trigger: "axis", valueFormatter: undefined },
      legend: { top: 0 },
      grid: { left: 64, right: 48, top: 40, bottom: 28 },
      xAxis: { type: "category", data: months },
      yAxis: [
        { type: "value", name: t("overview.revenueAxis", { c: o.currency ?? "" }), axisLabel: { formatter: (v: number) => num(v) } },
        { type: "value", name: t("overview.ordersAxis"), splitLine: { show: false } },
      ],
      series: [
        { name: t("overview.revenueSeries"), type: "bar", data: o.monthly_revenue.map((m) => m.revenue), tooltip: { valueFormatter: (v: number) => money(v, o.currency) }, barMaxWidth: 28 },
        { name: t("overview.ordersSeries"), type: "line", yAxisIndex: 1, data: o.monthly_revenue.map((m) => m.orders), tooltip: { valueFormatter: (v: number) => num(v) } },
      ],
    };
  }, [o, t, money, num, lang]);
  return <Chart option={option} label={t("overview.revenueChart")} />;
}

function NewReturningChart({ o, i18n }: { o: Overview; i18n: I18n }) {
  const { t, num } = i18n;
  const option = useMemo(() => ({
    tooltip: { trigger: "item", valueFormatter: (v: number) => num(v) },
    legend: { bottom: 0 },
    series: [{
      type: "pie", radius: ["45%", "70%"], center: ["50%", "45%"],
      label: { formatter: "{b}\n{c} ({d}%)" },
      data: [
        { name: t("overview.newCustomers"), value: o.active_new },
        { name: t("overview.returningCustomers"), value: o.active_returning },
      ],
    }],
  }), [o, t, num]);
  return <Chart option={option} label={t("overview.newReturning", { n: o.window_days })} />;
}

function DailyChart({ o, i18n }: { o: Overview; i18n: I18n }) {
  const { t, num, lang } = i18n;
  const option = useMemo(() => ({
    tooltip: { trigger: "axis", valueFormatter: (v: number) => num(v) },
    grid: { left: 56, right: 24, top: 32, bottom: 28 },
    xAxis: { type: "category", data: o.daily_active.map((d) => new Intl.DateTimeFormat(lang, { month: "short", day: "numeric" }).format(new Date(d.day + "T00:00:00Z"))) },
    yAxis: { type: "value", name: t("overview.customersAxis"), minInterval: 1 },
    series: [{ name: t("overview.activeSeries"), type: "line", areaStyle: { opacity: 0.15 }, showSymbol: false, data: o.daily_active.map((d) => d.active) }],
  }), [o, t, num, lang]);
  return <Chart option={option} height={240} label={t("overview.dailyActive", { n: o.window_days })} />;
}

function TagChart({ value, i18n, prefix, kind }: { value: ReturnType<typeof useApi<Coverage | null>>; i18n: I18n; prefix: string; kind: "pie" | "bar" }) {
  const { t, tOr, num, pct } = i18n;
  if (value.error) return <ErrorState error={value.error} onRetry={value.reload} />;
  if (value.loading && value.data === undefined) return <div style={{ height: 300 }} />;
  const c = value.data;
  if (!c || c.values.length === 0) return <EmptyState text={t("overview.noRfm")} />;
  const order = ["high", "medium", "low"];
  const values = prefix === "rfm.tier" ? [...c.values].sort((a, b) => order.indexOf(String(a.value)) - order.indexOf(String(b.value))) : c.values;
  const data = values.map((v) => ({ name: tOr(`${prefix}.${String(v.value)}`, String(v.value)), value: v.profiles }));
  const foot = t("overview.coverage", { tagged: num(c.tagged), total: num(c.total_profiles), p: pct(c.coverage) });
  const option = kind === "pie"
    ? { tooltip: { trigger: "item", valueFormatter: (v: number) => num(v) }, legend: { bottom: 0 },
        series: [{ type: "pie", radius: ["40%", "68%"], center: ["50%", "45%"], label: { formatter: "{b}\n{c}" }, data }] }
    : { tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v: number) => num(v) },
        grid: { left: 128, right: 40, top: 10, bottom: 24 },
        xAxis: { type: "value", minInterval: 1 },
        yAxis: { type: "category", data: data.map((d) => d.name).reverse(), axisLabel: { width: 118, overflow: "truncate" } },
        series: [{ type: "bar", name: t("overview.customersAxis"), data: data.map((d) => d.value).reverse(), barMaxWidth: 18, label: { show: true, position: "right" } }] };
  return (
    <>
      <Chart option={option} height={kind === "pie" ? 300 : Math.max(240, data.length * 30)} label={foot} />
      <Typography.Text type="secondary" style={{ fontSize: 12 }}>{foot}</Typography.Text>
    </>
  );
}
