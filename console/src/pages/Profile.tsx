/** The 360° profile: attributes, identities and merges, consents, tags, traits, scores and insights,
 * recent events, orders, the messages the customer received with their outcomes, and feedback. */
import { Badge, Card, Col, Descriptions, Empty, Row, Space, Statistic, Table, Tag, Timeline, Typography } from "antd";
import { ArrowLeftOutlined } from "@ant-design/icons";
import { Link, useParams } from "react-router-dom";
import { api, type ProfilePublic } from "../api/client";
import type { MessageRow } from "../api/types";
import { PageHead } from "../components/PageHead";
import { Async, ErrorState } from "../components/States";
import { useI18n, type I18n } from "../i18n";
import { useApi } from "../useApi";
import { featureLabel, modelLabel, scoreLabel, tagLabel, tagValueLabel } from "../labels";

type Dict = Record<string, unknown>;

function show(v: unknown, i18n: I18n): string {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v === "boolean") return v ? i18n.t("common.yes") : i18n.t("common.no");
  if (typeof v === "number") return i18n.num(v, 2);
  if (typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v)) return i18n.dateTime(v);
  if (Array.isArray(v)) return v.map((x) => show(x, i18n)).join(", ");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** Group memberships (``attributes.$groups``: group id -> the group's traits or true) as
 * "acme (Acme Optics), beta". */
function groupsText(v: unknown): string {
  if (!v || typeof v !== "object") return String(v ?? "—");
  return Object.entries(v as Dict).map(([id, traits]) => {
    const name = traits && typeof traits === "object" ? (traits as Dict).name : undefined;
    return name ? `${id} (${String(name)})` : id;
  }).join(", ") || "—";
}

function KeyValues({ data, i18n, label, empty }: { data: Dict; i18n: I18n; label?: (k: string) => string; empty: string }) {
  const entries = Object.entries(data ?? {});
  if (!entries.length) return <Empty image={Empty.PRESENTED_IMAGE_SIMPLE} description={empty} />;
  return (
    // labels wrap instead of squeezing the values into one character a line
    <Descriptions size="small" column={{ xs: 1, sm: 1, md: 2, lg: 2, xl: 2, xxl: 2 }} bordered
      labelStyle={{ whiteSpace: "normal", wordBreak: "break-word", width: "28%" }} contentStyle={{ minWidth: 72 }}>
      {entries.map(([k, v]) => (
        <Descriptions.Item key={k} label={label ? label(k) : k}>{k === "$groups" ? groupsText(v) : show(v, i18n)}</Descriptions.Item>
      ))}
    </Descriptions>
  );
}

export function ProfilePage() {
  const { profileId = "" } = useParams();
  const i18n = useI18n();
  const { t } = i18n;
  const profile = useApi((signal) => api.get("/api/v1/profiles/{profile_id}", { path: { profile_id: profileId }, signal }), [profileId]);
  return (
    <div>
      <Link to="/customers"><ArrowLeftOutlined /> {t("profile.back")}</Link>
      <Async value={profile} rows={12}>{(p) => <ProfileView p={p} i18n={i18n} />}</Async>
    </div>
  );
}

type Reason = { feature: string; value: unknown; contribution: number; description: string };
type ModelReasons = { version: number; score: number; reasons: Reason[] };

/** Why the churn / propensity models scored this customer as they did: per model the score and
 * the features that pushed it up most (GET /api/v1/insights/profiles/{id}/reasons; the reasons
 * live in the analytical store, so they come beside the profile, not in it). */
function ScoreReasons({ profileId, i18n }: { profileId: string; i18n: I18n }) {
  const { t } = i18n;
  const got = useApi((signal) => api.raw<{ models: Record<string, ModelReasons> }>(
    "get", `/api/v1/insights/profiles/${encodeURIComponent(profileId)}/reasons`, undefined, { signal }), [profileId]);
  const models = Object.entries(got.data?.models ?? {});
  if (got.error) return <Col xs={24}><ErrorState error={got.error} onRetry={got.reload} /></Col>;
  if (!models.length) return null;
  return (
    <Col xs={24}><Card title={t("profile.reasons")} data-testid="score-reasons">
      <Row gutter={[16, 16]}>
        {models.map(([model, m]) => (
          <Col xs={24} xl={12} key={model}>
            <Descriptions size="small" column={1} title={<Space>
              {modelLabel(i18n, model)}
              <Tag color={m.score >= 0.5 ? "red" : "green"}>{(m.score * 100).toFixed(1)}%</Tag>
              <Typography.Text type="secondary">{t("profile.modelVersion", { v: m.version })}</Typography.Text>
            </Space>} />
            <Table size="small" rowKey="feature" dataSource={m.reasons} pagination={false}
              locale={{ emptyText: t("profile.noReasons") }}
              columns={[
                { title: t("profile.reasonFeature"), dataIndex: "feature", render: (f: string, r: Reason) => featureLabel(i18n, f, r.description) },
                { title: t("profile.reasonValue"), dataIndex: "value", render: (v: unknown) => show(v, i18n) },
                { title: t("profile.reasonWeight"), dataIndex: "contribution", render: (c: number) => `+${c.toFixed(2)}` },
              ]} />
          </Col>
        ))}
      </Row>
    </Card></Col>
  );
}

function ProfileView({ p, i18n }: { p: ProfilePublic; i18n: I18n }) {
  const { t, tOr, dateTime, num, money } = i18n;
  const attrs = p.attributes as Dict;
  const name = (attrs.name as string) || (attrs.email as string) || p.profile_id;
  const os = p.order_summary as Dict;
  const insights = (p as unknown as Dict).insights as Dict | undefined;
  return (
    <>
      <PageHead
        title={<span data-testid="profile-name">{name}</span>}
        sub={<Space wrap>
          <span className="gk-mono">{p.profile_id}</span>
          <Tag color={p.origin === "existing" ? "gold" : "blue"}>{t(`profile.origin.${p.origin}`)}</Tag>
          {p.requested_id !== p.profile_id && <Tag>{t("profile.mergedFrom", { id: p.requested_id })}</Tag>}
        </Space>}
      />
      <Row gutter={[16, 16]}>
        <Col xs={24} md={6}><Card><Statistic title={t("profile.firstSeen")} value={dateTime(p.first_seen_at)} valueStyle={{ fontSize: 18 }} /><Typography.Text type="secondary">{tOr(`sources.${p.first_seen_source}`, p.first_seen_source)}</Typography.Text></Card></Col>
        <Col xs={24} md={6}><Card><Statistic title={t("profile.lastSeen")} value={dateTime(p.last_seen_at)} valueStyle={{ fontSize: 18 }} /></Card></Col>
        <Col xs={24} md={6}><Card><Statistic title={t("profile.orders")} value={num((os.orders as number) ?? 0)} valueStyle={{ fontSize: 18 }} /><Typography.Text type="secondary">{t("profile.lastOrder", { when: dateTime(os.last_order_at as string) })}</Typography.Text></Card></Col>
        <Col xs={24} md={6}><Card><Statistic title={t("profile.revenue")} value={money((os.revenue as number) ?? 0, (os.currency as string) ?? "CNY")} valueStyle={{ fontSize: 18 }} /><Typography.Text type="secondary">{t("profile.firstOrder", { when: dateTime(os.first_order_at as string) })}</Typography.Text></Card></Col>

        <Col xs={24} xl={12}><Card title={t("profile.attributes")}><KeyValues data={attrs} i18n={i18n} label={(k) => tOr(`attrs.${k}`, k)} empty={t("profile.noAttributes")} /></Card></Col>
        <Col xs={24} xl={12}>
          <Card title={t("profile.tags")} style={{ marginBottom: 16 }}>
            {Object.keys(p.tags).length ? (
              <Space wrap>{Object.entries(p.tags as Dict).map(([k, v]) => (
                <Tag key={k} color="gold">{tagLabel(i18n, k)}{v === true ? "" : `: ${tagValueLabel(i18n, k, v, (x) => show(x, i18n))}`}</Tag>
              ))}</Space>
            ) : <Empty image={Empty.PRESENTED_IMAGE_SIMPLE} description={t("profile.noTags")} />}
          </Card>
          <Card title={t("profile.traits")} style={{ marginBottom: 16 }}><KeyValues data={p.traits as Dict} i18n={i18n} empty={t("profile.noTraits")} /></Card>
          <Card title={t("profile.scores")}><KeyValues data={p.scores as Dict} i18n={i18n} label={(k) => scoreLabel(i18n, k)} empty={t("profile.noScores")} /></Card>
        </Col>
        <ScoreReasons profileId={p.profile_id} i18n={i18n} />
        {insights && Object.keys(insights).length > 0 && (
          <Col xs={24}><Card title={t("profile.insights")}>
            {Object.entries(insights).map(([model, payload]) => <ModelInsight key={model} model={model} payload={(payload as Dict) ?? {}} i18n={i18n} />)}
          </Card></Col>
        )}
        <Col xs={24} xl={12}>
          <Card title={t("profile.identities")}>
            <Table size="small" rowKey={(r) => `${r.type}:${r.value}`} dataSource={p.identities} pagination={false}
              columns={[
                { title: t("profile.idType"), dataIndex: "type", render: (v: string) => tOr(`idTypes.${v}`, v) },
                { title: t("profile.idValue"), dataIndex: "value", render: (v: string) => <span className="gk-mono">{v}</span> },
                { title: t("profile.source"), dataIndex: "source", render: (v: string) => tOr(`sources.${v}`, v) },
                { title: t("profile.since"), dataIndex: "first_seen_at", render: (v: string) => dateTime(v) },
              ]} />
          </Card>
        </Col>
        <Col xs={24} xl={12}>
          <Card title={t("profile.consents")} style={{ marginBottom: 16 }}>
            <Table size="small" rowKey={(r) => `${r.channel}:${r.purpose}`} dataSource={p.consents} pagination={false}
              locale={{ emptyText: t("profile.noConsents") }}
              columns={[
                { title: t("profile.channel"), dataIndex: "channel", render: (v: string) => tOr(`channels.${v}`, v) },
                { title: t("profile.purpose"), dataIndex: "purpose", render: (v: string) => tOr(`purposes.${v}`, v) },
                { title: t("profile.status"), dataIndex: "status", render: (v: string) => <Badge status={v === "granted" ? "success" : "error"} text={tOr(`consent.${v}`, v)} /> },
                { title: t("profile.updated"), dataIndex: "updated_at", render: (v: string) => dateTime(v) },
              ]} />
          </Card>
          <Card title={t("profile.merges")}>
            <Table size="small" rowKey="merge_id" dataSource={p.merges} pagination={false} locale={{ emptyText: t("profile.noMerges") }}
              columns={[
                { title: t("profile.mergedProfile"), dataIndex: "loser_id", render: (v: string) => <span className="gk-mono">{v}</span> },
                { title: t("profile.linkedBy"), dataIndex: "linked_by", render: (v: { type?: string; value?: string } | null) => (v && v.type ? `${tOr(`idTypes.${v.type}`, v.type)}: ${v.value ?? ""}` : "—") },
                { title: t("profile.when"), dataIndex: "created_at", render: (v: string) => dateTime(v) },
                { title: t("profile.status"), dataIndex: "undone_at", render: (v: string | null) => (v ? <Tag>{t("profile.undone")}</Tag> : <Tag color="green">{t("profile.active")}</Tag>) },
              ]} />
            {p.identity_conflicts.length > 0 && (
              <Typography.Paragraph type="warning" style={{ marginTop: 8 }}>{t("profile.conflicts", { n: p.identity_conflicts.length })}</Typography.Paragraph>
            )}
          </Card>
        </Col>
        <Col xs={24} xl={12}>
          <Card title={t("profile.timeline")} extra={<Typography.Text type="secondary">{t("profile.latestN", { n: Math.min(p.events.length, 20) })}</Typography.Text>}>
            {p.events.length ? (
              <Timeline items={(p.events as Dict[]).slice(0, 20).map((e) => ({
                color: e.type === "track" ? "blue" : "gray",
                children: (
                  <div>
                    <Typography.Text strong>{(e.event as string) || (e.name as string) || tOr(`eventTypes.${e.type}`, String(e.type))}</Typography.Text>
                    <Typography.Text type="secondary" style={{ marginLeft: 8 }}>{dateTime(e.ts as string)}</Typography.Text>
                    {e.properties && Object.keys(e.properties as Dict).length > 0 ? (
                      <div className="gk-mono" style={{ color: "#595959" }}>
                        {Object.entries(e.properties as Dict).filter(([, v]) => typeof v !== "object").slice(0, 4).map(([k, v]) => `${k}: ${String(v)}`).join(" · ")}
                      </div>
                    ) : null}
                  </div>
                ),
              }))} />
            ) : <Empty image={Empty.PRESENTED_IMAGE_SIMPLE} description={t("profile.noEvents")} />}
          </Card>
        </Col>
        <Col xs={24}>
          <MessagesCard p={p} i18n={i18n} />
        </Col>
        <Col xs={24} xl={12}>
          <Card title={t("profile.orderSummary")} style={{ marginBottom: 16 }}>
            <KeyValues data={{ ...os, ...(typeof os.revenue === "number" ? { revenue: money(os.revenue as number, (os.currency as string) ?? "CNY") } : {}) }} i18n={i18n} label={(k) => tOr(`orderKeys.${k}`, k)} empty={t("profile.noOrders")} />
          </Card>
          <Card title={t("profile.feedback")}>
            <Table size="small" rowKey="feedback_id" dataSource={p.feedback} pagination={{ pageSize: 5, hideOnSinglePage: true }}
              locale={{ emptyText: t("profile.noFeedback") }}
              columns={[
                { title: t("profile.when"), dataIndex: "created_at", render: (v: string) => dateTime(v), width: 150 },
                { title: t("profile.fbKind"), dataIndex: "kind", render: (v: string) => tOr(`fbKinds.${v}`, v) },
                { title: t("profile.fbChannel"), dataIndex: "channel", render: (v: string | null) => (v ? tOr(`channels.${v}`, v) : "—") },
                { title: t("profile.rating"), dataIndex: "rating", render: (v: number | null) => (v === null || v === undefined ? "—" : "★".repeat(v)) },
                { title: t("profile.text"), dataIndex: "text" },
                { title: t("profile.fbSentiment"), dataIndex: "sentiment", render: (s: { label?: string } | null) => (s?.label ? tOr(`sentiment.${s.label}`, s.label) : "—") },
                { title: t("profile.fbTopics"), key: "topics", render: (_: unknown, r: Dict) => {
                  const s = r.sentiment as { topics?: string[] } | null;
                  const topics = [...(s?.topics ?? []), ...(r.topic && !(s?.topics ?? []).length ? [String(r.topic)] : [])];
                  return topics.length ? <Space wrap size={4}>{topics.map((x) => <Tag key={x}>{tOr(`topics.${x}`, x)}</Tag>)}</Space> : "—";
                } },
              ]} />
          </Card>
        </Col>
      </Row>
    </>
  );
}

type RecItem = { sku: string; score?: number; reason?: string };

/** One model's per-customer output stored on the profile (``insights``): recommendations as a table
 * of products, anything else as labelled values. */
function ModelInsight({ model, payload, i18n }: { model: string; payload: Dict; i18n: I18n }) {
  const { t, num } = i18n;
  const version = payload.version as number | undefined;
  const title = version !== undefined ? t("profile.insightsOf", { model: modelLabel(i18n, model), v: version }) : modelLabel(i18n, model);
  if (model === "recommend") {
    const items = (payload.items as RecItem[] | undefined) ?? [];
    const next = payload.next_best as RecItem | null | undefined;
    return (
      <div style={{ marginBottom: 12 }} data-testid="insight-recommend">
        <Typography.Title level={5}>{title}</Typography.Title>
        {next?.sku && <Typography.Paragraph>{t("profile.nextBest")}: <Tag color="gold" className="gk-mono">{next.sku}</Tag>{next.reason ?? ""}</Typography.Paragraph>}
        <Table<RecItem> size="small" rowKey="sku" dataSource={items} pagination={false}
          columns={[
            { title: t("profile.sku"), dataIndex: "sku", render: (v: string) => <span className="gk-mono">{v}</span> },
            { title: t("profile.score"), dataIndex: "score", render: (v: number | undefined) => (v === undefined ? "—" : num(v, 2)) },
            { title: t("profile.reason"), dataIndex: "reason" },
          ]} />
      </div>
    );
  }
  const rest = Object.entries(payload).filter(([k]) => k !== "version");
  return (
    <Descriptions title={title} size="small" bordered column={1} style={{ marginBottom: 12 }}>
      {rest.map(([k, v]) => <Descriptions.Item key={k} label={k}>{show(v, i18n)}</Descriptions.Item>)}
    </Descriptions>
  );
}

/** The messages sent to this customer (and to the profiles merged into it), newest first. */
const MESSAGE_LIMIT = 50;
const OUTCOMES = ["sent_at", "delivered_at", "opened_at", "clicked_at"] as const;

function refLink(ref: string | null, i18n: I18n) {
  if (!ref) return "—";
  const [kind, id] = ref.split(":");
  if (kind === "campaign" && id) return <Link to={`/campaigns/${id}`}>{i18n.t("profile.msgCampaign")}</Link>;
  if (kind === "journey" && id) return <Link to={`/journeys/${id}`}>{i18n.t("profile.msgJourney")}</Link>;
  return <span className="gk-mono">{i18n.tOr(`profile.msgRef.${kind}`, kind)}</span>;
}

function MessagesCard({ p, i18n }: { p: ProfilePublic; i18n: I18n }) {
  const { t, tOr, dateTime, num } = i18n;
  const ids = [p.profile_id, ...(p.merges as { loser_id: string; undone_at: string | null }[]).filter((m) => !m.undone_at && m.loser_id !== p.profile_id).map((m) => m.loser_id)].slice(0, 6);
  const msgs = useApi(async (signal) => {
    const pages = await Promise.all(ids.map((id) => api.raw<{ messages: MessageRow[] }>("get", "/api/v1/messages", undefined, { query: { profile_id: id, limit: MESSAGE_LIMIT }, signal })));
    return pages.flatMap((x) => x.messages).sort((a, b) => (b.created_at ?? "").localeCompare(a.created_at ?? "")).slice(0, MESSAGE_LIMIT);
  }, [ids.join(",")]);
  const counts = (msgs.data ?? []).reduce((acc, m) => {
    for (const o of OUTCOMES) if (m[o]) acc[o] = (acc[o] ?? 0) + 1;
    return acc;
  }, {} as Record<string, number>);
  return (
    <Card title={t("profile.messages")} data-testid="profile-messages"
      extra={msgs.data && msgs.data.length > 0 ? <Typography.Text type="secondary">{t("profile.msgSummary", { n: num(msgs.data.length), delivered: num(counts.delivered_at ?? 0), opened: num(counts.opened_at ?? 0), clicked: num(counts.clicked_at ?? 0) })}</Typography.Text> : null}>
      {msgs.error ? <ErrorState error={msgs.error} onRetry={msgs.reload} /> : (
        <Table<MessageRow> size="small" rowKey="message_id" loading={msgs.loading && !msgs.data} dataSource={msgs.data ?? []}
          pagination={{ pageSize: 8, hideOnSinglePage: true }} locale={{ emptyText: <Empty image={Empty.PRESENTED_IMAGE_SIMPLE} description={t("profile.noMessages")} /> }}
          columns={[
            { title: t("profile.when"), dataIndex: "created_at", render: (v: string) => dateTime(v), width: 170 },
            { title: t("profile.channel"), dataIndex: "channel", render: (v: string) => tOr(`channels.${v}`, v) },
            { title: t("profile.purpose"), dataIndex: "purpose", render: (v: string) => tOr(`purposes.${v}`, v) },
            { title: t("profile.msgFrom"), dataIndex: "ref", render: (v: string | null) => refLink(v, i18n) },
            { title: t("profile.msgTo"), dataIndex: "address", render: (v: string | null) => <span className="gk-mono">{v ?? "—"}</span> },
            {
              title: t("profile.status"), dataIndex: "status",
              render: (v: string, m) => <Space direction="vertical" size={0}>
                <Badge status={v === "delivered" || v === "sent" ? "success" : v === "failed" || v === "dead" ? "error" : "processing"} text={tOr(`profile.msgStatus.${v}`, v)} />
                {m.reason ? <Typography.Text type="secondary" style={{ fontSize: 12 }}>{m.reason}</Typography.Text> : null}
              </Space>,
            },
            {
              title: t("profile.msgOutcome"), key: "o",
              render: (_: unknown, m) => <div className="gk-outcomes">{OUTCOMES.filter((o) => m[o]).map((o) => (
                <Tag key={o} color={o === "clicked_at" ? "gold" : o === "opened_at" ? "blue" : o === "delivered_at" ? "green" : "default"} title={dateTime(m[o])}>
                  {t(`profile.outcome.${o}`)}
                </Tag>
              ))}{OUTCOMES.every((o) => !m[o]) ? "—" : null}</div>,
            },
          ]} />
      )}
    </Card>
  );
}
