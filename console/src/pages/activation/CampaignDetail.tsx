/** A campaign: status with launch / pause / resume / cancel, live progress of the current run (polled
 * every 2 s while it is scheduled or running), the funnel per variant and holdout, and the uplift
 * against the holdout with its 95 % interval (GET /api/v1/campaigns/{id} and …/report). */
import { Alert, App, Button, Card, Col, Descriptions, Popconfirm, Progress, Row, Space, Statistic, Table, Typography } from "antd";
import { useEffect, useMemo, useState } from "react";
import { Link, useParams } from "react-router-dom";
import { api, ApiError } from "../../api/client";
import type { ArmReport, Campaign, CampaignReport, UpliftGroup } from "../../api/types";
import { Chart, escapeHtml, intervalSeries } from "../../components/Chart";
import { PageHead } from "../../components/PageHead";
import { Async, EmptyState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useRole } from "../../role";
import { useApi } from "../../useApi";
import { StatusTag } from "./Campaigns";
import { Ref, useChannelNames, useSegmentNames, type RefIndex } from "./refs";

const LIVE = new Set(["scheduled", "running"]);

export function CampaignDetailPage() {
  const { campaignId = "" } = useParams();
  const path = `/api/v1/campaigns/${encodeURIComponent(campaignId)}`;
  const camp = useApi((signal) => api.raw<Campaign>("get", path, undefined, { signal }), [campaignId]);
  // names of the segment and channel, once per page (not on every 2 s poll of the campaign)
  const refs = { segments: useSegmentNames(), channels: useChannelNames() };
  const [tick, setTick] = useState(0);
  const live = camp.data ? LIVE.has(camp.data.status) : false;
  useEffect(() => {
    if (!live) return;
    const id = window.setInterval(() => { camp.reload(); setTick((n) => n + 1); }, 2000);
    return () => window.clearInterval(id);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [live]);
  return (
    <div>
      <Link to="/campaigns">← {useI18n().t("campaigns.back")}</Link>
      <Async value={camp} rows={10}>{(c) => <Detail c={c} path={path} reload={camp.reload} tick={tick} refs={refs} />}</Async>
    </div>
  );
}

interface Refs {
  segments: RefIndex;
  channels: RefIndex;
}

function Detail({ c, path, reload, tick, refs }: { c: Campaign; path: string; reload: () => void; tick: number; refs: Refs }) {
  const { t, num, pct, dateTime } = useI18n();
  const { can } = useRole();
  const { message } = App.useApp();
  const [busy, setBusy] = useState<string | null>(null);
  const act = async (verb: string) => {
    setBusy(verb);
    try {
      await api.raw("post", `${path}/${verb}`);
      message.success(t(`campaigns.did.${verb}`));
      reload();
    } catch (e) {
      message.error((e as Error).message);
    } finally {
      setBusy(null);
    }
  };
  const p = c.progress;
  const sent = (p.messages.sent ?? 0) + (p.messages.delivered ?? 0);
  const treated = Math.max(0, p.targeted - (p.members.holdout ?? 0));
  const done = treated ? (treated - (p.members.pending ?? 0)) / treated : 0;
  return (
    <>
      <PageHead title={<Space>{c.name}<StatusTag status={c.status} /></Space>} sub={t("campaigns.detailSub", { id: c.campaign_id, when: dateTime(c.created_at) })}
        extra={
          <Space wrap>
            {can("launch") && ["draft", "scheduled"].includes(c.status) && c.progress.run_status !== "running" && <Button type="primary" loading={busy === "launch"} onClick={() => act("launch")}>{t("campaigns.launch")}</Button>}
            {can("launch") && c.status === "running" && <Button loading={busy === "pause"} onClick={() => act("pause")}>{t("campaigns.pause")}</Button>}
            {can("launch") && c.status === "paused" && <Button type="primary" loading={busy === "resume"} onClick={() => act("resume")}>{t("campaigns.resume")}</Button>}
            {["scheduled", "running", "paused"].includes(c.status) && (
              <Popconfirm title={t("campaigns.cancelConfirm")} onConfirm={() => act("cancel")} okText={t("common.yes")} cancelText={t("common.no")}>
                <Button danger loading={busy === "cancel"}>{t("campaigns.cancelCampaign")}</Button>
              </Popconfirm>
            )}
          </Space>
        } />
      {c.error && <Alert type="error" showIcon message={c.error} style={{ marginBottom: 16 }} />}
      <Row gutter={[16, 16]}>
        <Col xs={24} xl={14}>
          <Card title={t("campaigns.progress", { run: p.run })} data-testid="campaign-progress">
            {p.run === 0 ? <EmptyState text={t("campaigns.notLaunched")} /> : (
              <>
                <Progress percent={Math.round(done * 1000) / 10} status={c.status === "running" ? "active" : undefined} strokeColor="#c8961e" aria-label={t("campaigns.progressBar")} />
                <Row gutter={16} style={{ marginTop: 12 }}>
                  <Col span={6}><Statistic title={t("campaigns.targeted")} value={num(p.targeted)} /></Col>
                  <Col span={6}><Statistic title={t("campaigns.holdoutN")} value={num(p.members.holdout ?? 0)} /></Col>
                  <Col span={6}><Statistic title={t("campaigns.sent")} value={num(sent)} /></Col>
                  <Col span={6}><Statistic title={t("campaigns.suppressed")} value={num(p.members.suppressed ?? 0)} /></Col>
                </Row>
                <Typography.Paragraph type="secondary" style={{ marginTop: 12, marginBottom: 0 }}>
                  {t("campaigns.members")}: {Object.entries(p.members).map(([k, v]) => `${t(`campaigns.memberStatus.${k}`)} ${num(v)}`).join(" · ") || "—"}
                  <br />
                  {t("campaigns.messages")}: {Object.entries(p.messages).map(([k, v]) => `${k} ${num(v)}`).join(" · ") || "—"}
                  {p.unmatched ? <><br />{t("campaigns.unmatched", { n: num(p.unmatched) })}</> : null}
                </Typography.Paragraph>
              </>
            )}
          </Card>
        </Col>
        <Col xs={24} xl={10}>
          <Card title={t("campaigns.definition")}>
            <Descriptions size="small" column={1} items={[
              { key: "a", label: t("campaigns.segment"), children: c.definition.audience.segment_id
                ? <Ref id={c.definition.audience.segment_id} index={refs.segments} to={`/segments/${encodeURIComponent(c.definition.audience.segment_id)}`} />
                : t("campaigns.uploadedList") },
              { key: "c", label: t("campaigns.channel"), children: <Ref id={c.definition.channel_id} index={refs.channels} to="/settings?tab=channels" /> },
              { key: "v", label: t("campaigns.variantsCard"), children: c.definition.variants.map((v) => `${v.key} (${num(v.weight)})`).join(" · ") },
              { key: "h", label: t("campaigns.holdout"), children: pct(c.definition.holdout_pct / 100) },
              { key: "s", label: t("campaigns.schedule"), children: c.definition.schedule.kind === "at" ? dateTime(c.definition.schedule.at) : t(`campaigns.scheduleKind.${c.definition.schedule.kind}`) },
              { key: "t", label: t("campaigns.throttle"), children: c.definition.throttle_per_minute ? `${num(c.definition.throttle_per_minute)} ${t("campaigns.perMinute")}` : t("campaigns.noThrottle") },
              { key: "k", label: t("campaigns.conversion"), children: c.definition.conversion.order ? t("campaigns.convOrder") : c.definition.conversion.event },
            ]} />
          </Card>
        </Col>
        {p.run > 0 && <Col xs={24}><ReportCards path={path} tick={tick} status={c.status} /></Col>}
      </Row>
    </>
  );
}

function ReportCards({ path, tick, status }: { path: string; tick: number; status: string }) {
  const { t } = useI18n();
  const rep = useApi<CampaignReport | null>(async (signal) => {
    try {
      return await api.raw<CampaignReport>("get", `${path}/report`, undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 409)) return null;
      throw e;
    }
  }, [path, tick, status]);
  return (
    <Async value={rep} rows={6}>
      {(r) => (r ? <Report r={r} /> : <Card><EmptyState text={t("campaigns.noReport")} /></Card>)}
    </Async>
  );
}

const STAGES = ["targeted", "sent", "delivered", "opened", "clicked", "converted"] as const;

function Report({ r }: { r: CampaignReport }) {
  const { t, num, pct, money, lang, dateTime } = useI18n();
  const arms = r.arms.filter((a) => a.arm !== "holdout");
  const funnel = useMemo(() => ({
    tooltip: { trigger: "axis" },
    legend: { top: 0 },
    grid: { left: 56, right: 16, top: 40, bottom: 32 },
    xAxis: { type: "category", data: STAGES.map((s) => t(`campaigns.funnel.${s}`)) },
    yAxis: { type: "value", name: t("insight.profiles") },
    series: arms.map((a) => ({ type: "bar", name: t("campaigns.variantName", { k: a.arm }), data: STAGES.map((s) => (a as unknown as Record<string, number>)[s] ?? 0) })),
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }), [r, lang]);
  const groups = r.uplift.available ? ["treated", ...arms.map((a) => a.arm)].filter((g) => (r.uplift[g] as UpliftGroup | undefined)?.uplift !== undefined) : [];
  const uplift = useMemo(() => {
    const rows = groups.map((g) => r.uplift[g] as UpliftGroup);
    return {
      tooltip: {
        trigger: "axis",
        formatter: (ps: { dataIndex: number }[]) => {
          const u = rows[ps[0].dataIndex];
          return `${escapeHtml(label(groups[ps[0].dataIndex]))}<br/>${t("campaigns.uplift")}: ${pp(u.uplift)}<br/>95% CI: [${pp(u.uplift_ci95?.[0])}, ${pp(u.uplift_ci95?.[1])}]`;
        },
      },
      // top: room for the axis name above the plot (whiskers are inside the axis extent)
      grid: { left: 64, right: 24, top: 40, bottom: 32 },
      xAxis: { type: "category", data: groups.map(label) },
      yAxis: { type: "value", name: t("campaigns.upliftAxis"), axisLabel: { formatter: "{value} pp" } },
      series: [
        { type: "bar", barMaxWidth: 48, data: rows.map((u) => +(100 * (u.uplift ?? 0)).toFixed(3)), itemStyle: { color: "#c8961e" },
          markLine: { silent: true, symbol: "none", lineStyle: { color: "#8a8f98" }, data: [{ yAxis: 0 }] } },
        intervalSeries(rows.map((u) => [100 * (u.uplift_ci95?.[0] ?? 0), 100 * (u.uplift_ci95?.[1] ?? 0)])),
      ],
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [r, lang]);
  function label(g: string) {
    return g === "treated" ? t("campaigns.treated") : t("campaigns.variantName", { k: g });
  }
  function pp(x: number | undefined) {
    return x === undefined ? "—" : `${num(100 * x, 2)} pp`;
  }
  return (
    <Row gutter={[16, 16]}>
      <Col xs={24} xl={12}>
        <Card title={t("campaigns.funnelTitle")} extra={<Typography.Text type="secondary">{t("campaigns.attributionNote", { n: r.attribution_days })}</Typography.Text>}>
          {arms.length ? <Chart option={funnel} height={300} label={t("campaigns.funnelTitle")} /> : <EmptyState text={t("campaigns.noArms")} />}
        </Card>
      </Col>
      <Col xs={24} xl={12}>
        <Card title={t("campaigns.upliftTitle")} extra={!r.window_complete && r.window_ends_at ? <Typography.Text type="warning">{t("campaigns.windowOpen", { when: dateTime(r.window_ends_at) })}</Typography.Text> : null}>
          {r.uplift.available && groups.length ? <Chart option={uplift} height={300} label={t("campaigns.upliftTitle")} /> : <EmptyState text={r.uplift.reason ?? t("campaigns.noUplift")} />}
        </Card>
      </Col>
      <Col xs={24}>
        <Card title={t("campaigns.armsTitle")}>
          <Table<ArmReport> rowKey="arm" size="small" pagination={false} dataSource={r.arms} data-testid="arms-table" columns={[
            { title: t("campaigns.arm"), dataIndex: "arm", render: (a: string) => (a === "holdout" ? t("campaigns.holdoutArm") : t("campaigns.variantName", { k: a })) },
            { title: t("campaigns.funnel.targeted"), dataIndex: "targeted", align: "right", render: (n: number) => num(n) },
            { title: t("campaigns.funnel.sent"), dataIndex: "sent", align: "right", render: (n?: number) => num(n) },
            { title: t("campaigns.funnel.clicked"), dataIndex: "clicked", align: "right", render: (n?: number) => num(n) },
            { title: t("campaigns.ittConv"), key: "itt", align: "right", render: (_: unknown, a) => `${num(a.itt.converted)} · ${pct(a.itt.conversion_rate, 2)}` },
            { title: t("campaigns.revenue"), key: "rev", align: "right", render: (_: unknown, a) => money(a.itt.revenue) },
            { title: t("campaigns.upliftCol"), key: "u", align: "right", render: (_: unknown, a) => {
              const u = r.uplift[a.arm] as UpliftGroup | undefined;
              return u?.uplift === undefined ? "—" : `${pp(u.uplift)} [${pp(u.uplift_ci95?.[0])}, ${pp(u.uplift_ci95?.[1])}]`;
            } },
          ]} />
          <Typography.Paragraph type="secondary" style={{ fontSize: 12, marginTop: 8, marginBottom: 0 }}>{r.method.uplift_ci}</Typography.Paragraph>
        </Card>
      </Col>
    </Row>
  );
}
