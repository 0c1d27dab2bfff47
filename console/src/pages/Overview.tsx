/** The overview dashboard: KPIs and charts from /api/v1/console/overview, the RFM tags' coverage, and
 * the recent campaigns with their uplift against the holdout (GET /api/v1/campaigns and each one's
 * /report). */
import { Card, Col, Row, Segmented, Statistic, Table, Tag, Typography } from "antd";
import { useMemo, useState } from "react";
import { Link } from "react-router-dom";
import { api, ApiError } from "../api/client";
import type { CampaignReport, CampaignSummary, Coverage, LifecycleSummary, Overview, UpliftGroup } from "../api/types";
import { Chart, escapeHtml, intervalSeries } from "../components/Chart";
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
  const stages = useApi<LifecycleSummary | null>(async (signal) => {
    try {
      return await api.raw<LifecycleSummary>("get", "/api/v1/insights/lifecycle/summary", undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null; // the lifecycle model has not run yet
      throw e;
    }
  });
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
        <Col xs={24}>
          <RecentCampaigns i18n={i18n} />
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
        <Col xs={24}>
          <Card title={t("overview.lifecycle")} extra={<Link to="/insight/lifecycle">{t("overview.lifecycleMore")}</Link>}>
            <Async value={stages}>{(sum) => (sum ? <StageChart s={sum} i18n={i18n} /> : <EmptyState text={t("insight.lifecycle.empty")} />)}</Async>
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

/** Customers per lifecycle stage (the latest lifecycle run), in the stages' order. */
function StageChart({ s, i18n }: { s: LifecycleSummary; i18n: I18n }) {
  const { t, num, pct, lang } = i18n;
  const option = useMemo(() => ({
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v: number) => num(v) },
    grid: { left: 56, right: 24, top: 32, bottom: 28 },
    xAxis: { type: "category", data: s.stages.map((x) => (lang === "zh-CN" ? x.zh : x.en)) },
    yAxis: { type: "value", name: t("overview.customersAxis"), minInterval: 1 },
    series: [{ type: "bar", name: t("overview.customersAxis"), barMaxWidth: 48, label: { show: true, position: "top" },
               data: s.stages.map((x) => x.profiles) }],
  }), [s, t, num, lang]);
  const foot = t("overview.lifecycleFoot", { staged: num(s.staged), customers: num(s.customers), p: pct(s.customers ? s.staged / s.customers : 0), version: s.version });
  return (
    <>
      <Chart option={option} height={260} label={t("overview.lifecycle")} />
      <Typography.Text type="secondary" style={{ fontSize: 12 }}>{foot}</Typography.Text>
    </>
  );
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

/** How many of the newest campaigns the overview reports on (one report request each). */
const RECENT = 6;

interface RecentRow {
  campaign: CampaignSummary;
  report: CampaignReport | null;
}

async function recentCampaigns(signal: AbortSignal): Promise<RecentRow[]> {
  const all = await api.raw<CampaignSummary[]>("get", "/api/v1/campaigns", undefined, { signal });
  const recent = [...all].filter((c) => c.run > 0).sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, RECENT);
  return Promise.all(recent.map(async (campaign) => {
    try {
      const report = await api.raw<CampaignReport>("get", `/api/v1/campaigns/${encodeURIComponent(campaign.campaign_id)}/report`, undefined, { signal });
      return { campaign, report };
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 409)) return { campaign, report: null };
      throw e;
    }
  }));
}

function RecentCampaigns({ i18n }: { i18n: I18n }) {
  const { t, num, pct, money } = i18n;
  const rows = useApi(recentCampaigns);
  const pp = (x: number | undefined | null) => (x === undefined || x === null ? "—" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)} pp`);
  const withUplift = (rows.data ?? []).filter((r) => r.report?.uplift.available && (r.report.uplift.treated as UpliftGroup | undefined)?.uplift !== undefined);
  const option = useMemo(() => {
    const names = withUplift.map((r) => r.campaign.name);
    const ups = withUplift.map((r) => r.report!.uplift.treated as UpliftGroup);
    return {
      tooltip: {
        trigger: "axis", axisPointer: { type: "shadow" },
        formatter: (ps: { dataIndex: number }[]) => {
          const u = ups[ps[0].dataIndex];
          return `${escapeHtml(names[ps[0].dataIndex])}<br/>${t("overview.upliftSeries")}: ${pp(u.uplift)}<br/>95% CI: [${pp(u.uplift_ci95?.[0])}, ${pp(u.uplift_ci95?.[1])}]`;
        },
      },
      grid: { left: 56, right: 16, top: 40, bottom: 56 },
      xAxis: { type: "category", data: names, axisLabel: { interval: 0, width: Math.max(48, 340 / Math.max(1, names.length)), overflow: "truncate" } },
      yAxis: { type: "value", name: t("overview.upliftAxis"), axisLabel: { formatter: "{value} pp" } },
      series: [
        { type: "bar", name: t("overview.upliftSeries"), barMaxWidth: 40, data: ups.map((u) => +(100 * (u.uplift ?? 0)).toFixed(3)),
          itemStyle: { color: "#c8961e" }, markLine: { silent: true, symbol: "none", data: [{ yAxis: 0 }], label: { show: false }, lineStyle: { color: "#8c8c8c" } } },
        intervalSeries(ups.map((u) => [100 * (u.uplift_ci95?.[0] ?? 0), 100 * (u.uplift_ci95?.[1] ?? 0)])),
      ],
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [rows.data, t]);
  return (
    <Card title={t("overview.recentCampaigns")} extra={<Link to="/campaigns">{t("overview.allCampaigns")}</Link>} data-testid="recent-campaigns">
      <Async value={rows} rows={5}>
        {(list) => list.length === 0 ? <EmptyState text={t("overview.noCampaigns")} /> : (
          <Row gutter={[16, 16]}>
            <Col xs={24} xl={10}>
              {withUplift.length ? <Chart option={option} height={300} label={t("overview.upliftChart")} />
                : <EmptyState text={t("overview.noUplift")} />}
              <Typography.Text type="secondary" style={{ fontSize: 12 }}>{t("overview.upliftNote")}</Typography.Text>
            </Col>
            <Col xs={24} xl={14}>
              <Table<RecentRow>
                size="small" pagination={false} rowKey={(r) => r.campaign.campaign_id} dataSource={list}
                columns={[
                  { title: t("overview.campaign"), key: "name", render: (_: unknown, r) => <Link to={`/campaigns/${r.campaign.campaign_id}`}>{r.campaign.name}</Link> },
                  { title: t("overview.campaignStatus"), key: "status", render: (_: unknown, r) => <Tag>{i18n.tOr(`campaigns.status.${r.campaign.status}`, r.campaign.status)}</Tag> },
                  { title: t("overview.targeted"), key: "n", align: "right", render: (_: unknown, r) => num(r.report?.arms.reduce((s, a) => s + a.targeted, 0)) },
                  {
                    title: t("overview.convTreatedHoldout"), key: "cr", align: "right",
                    render: (_: unknown, r) => {
                      const u = r.report?.uplift;
                      if (!u?.available) return "—";
                      return `${pct((u.treated as UpliftGroup | undefined)?.conversion_rate, 1)} / ${pct(u.holdout?.conversion_rate, 1)}`;
                    },
                  },
                  {
                    title: t("overview.upliftCol"), key: "u", align: "right",
                    render: (_: unknown, r) => {
                      const u = r.report?.uplift;
                      if (!r.report) return <Typography.Text type="secondary">{t("overview.noReport")}</Typography.Text>;
                      if (!u?.available) return <Typography.Text type="secondary">{t("overview.noHoldout")}</Typography.Text>;
                      const g = u.treated as UpliftGroup | undefined;
                      if (g?.uplift === undefined) return "—";
                      const sig = g.uplift_ci95 && (g.uplift_ci95[0] > 0 || g.uplift_ci95[1] < 0);
                      return <span data-testid="campaign-uplift" data-uplift={g.uplift}>
                        <Typography.Text strong={!!sig} type={sig ? (g.uplift > 0 ? "success" : "danger") : undefined}>{pp(g.uplift)}</Typography.Text>
                        <Typography.Text type="secondary" style={{ fontSize: 12 }}> [{pp(g.uplift_ci95?.[0])}, {pp(g.uplift_ci95?.[1])}]</Typography.Text>
                      </span>;
                    },
                  },
                  {
                    title: t("overview.incrementalRevenue"), key: "rev", align: "right",
                    render: (_: unknown, r) => {
                      const g = r.report?.uplift.available ? (r.report.uplift.treated as UpliftGroup & { incremental_revenue?: number }) : undefined;
                      return g?.incremental_revenue === undefined ? "—" : money(g.incremental_revenue);
                    },
                  },
                ]}
              />
            </Col>
          </Row>
        )}
      </Async>
    </Card>
  );
}
