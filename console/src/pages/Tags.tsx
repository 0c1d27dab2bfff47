/** Tags and traits with their coverage, and forms to create a rule tag (with the visual builder) and
 * a computed trait, without typing JSON. */
import { Alert, App, Button, Card, Drawer, Form, Input, InputNumber, Progress, Select, Space, Table, Tabs, Tag as AntTag, Typography } from "antd";
import { PlusOutlined, DeleteOutlined } from "@ant-design/icons";
import { useState } from "react";
import { api, ApiError, type TraitPublic } from "../api/client";
import type { Tag } from "../api/types";
import { PageHead } from "../components/PageHead";
import { ErrorState } from "../components/States";
import { useI18n } from "../i18n";
import { useRole } from "../role";
import { useApi } from "../useApi";
import { clean, emptyGroup, isComplete, type GroupCond } from "../rules/model";
import { RuleEditor } from "../rules/RuleEditor";
import { RuleSummary } from "../rules/RuleSummary";
import { EstimatePanel, useCatalog } from "./SegmentBuilder";

interface CoverageAll { total_profiles: number; fields: Record<string, number> }

function CoverageCell({ n, total }: { n: number | undefined; total: number }) {
  const { num, pct } = useI18n();
  if (n === undefined || !total) return <Typography.Text type="secondary">—</Typography.Text>;
  return (
    <div style={{ minWidth: 160 }}>
      <Progress percent={Math.round((n / total) * 1000) / 10} size="small" showInfo={false} strokeColor="#c8961e" aria-hidden />
      <Typography.Text style={{ fontSize: 12 }}>{num(n)} · {pct(n / total)}</Typography.Text>
    </div>
  );
}

export function TagsPage() {
  const { t } = useI18n();
  const tags = useApi((signal) => api.raw<Tag[]>("get", "/api/v1/tags", undefined, { signal }));
  const traits = useApi((signal) => api.get("/api/v1/traits", { signal }));
  const cov = useApi((signal) => api.raw<CoverageAll>("get", "/api/v1/console/coverage", undefined, { signal }));
  const [drawer, setDrawer] = useState<"tag" | "trait" | null>(null);
  const { can } = useRole();
  const reload = () => { tags.reload(); traits.reload(); cov.reload(); };
  return (
    <div>
      <PageHead title={t("tags.title")} sub={t("tags.sub")}
        extra={can("editAudience") && <Space>
          <Button type="primary" icon={<PlusOutlined />} onClick={() => setDrawer("tag")}>{t("tags.newTag")}</Button>
          <Button icon={<PlusOutlined />} onClick={() => setDrawer("trait")}>{t("tags.newTrait")}</Button>
        </Space>} />
      <Card>
        <Tabs items={[
          { key: "tags", label: t("tags.tagsTab"), children: <TagTable tags={tags} cov={cov.data} /> },
          { key: "traits", label: t("tags.traitsTab"), children: <TraitTable traits={traits} cov={cov.data} /> },
        ]} />
      </Card>
      <Drawer open={drawer === "tag"} width={Math.min(1100, window.innerWidth - 40)} title={t("tags.newTag")} onClose={() => setDrawer(null)} destroyOnClose>
        <TagForm onDone={() => { setDrawer(null); reload(); }} />
      </Drawer>
      <Drawer open={drawer === "trait"} width={Math.min(640, window.innerWidth - 40)} title={t("tags.newTrait")} onClose={() => setDrawer(null)} destroyOnClose>
        <TraitForm onDone={() => { setDrawer(null); reload(); }} />
      </Drawer>
    </div>
  );
}

function TagTable({ tags, cov }: { tags: ReturnType<typeof useApi<Tag[]>>; cov?: CoverageAll }) {
  const { t, tOr, dateTime } = useI18n();
  if (tags.error) return <ErrorState error={tags.error} onRetry={tags.reload} />;
  return (
    <Table<Tag> rowKey="name" loading={tags.loading} dataSource={tags.data ?? []} locale={{ emptyText: t("tags.noTags") }}
      pagination={{ pageSize: 20, hideOnSinglePage: true }}
      expandable={{ rowExpandable: (r) => r.rules.length > 0, expandedRowRender: (r) => (
        <div>{r.rules.map((x, i) => <div key={i} style={{ marginBottom: 8 }}><AntTag color="gold">{String(x.value)}</AntTag><RuleSummary rule={x.rule} /></div>)}</div>) }}
      columns={[
        { title: t("tags.name"), dataIndex: "name", render: (v: string, r) => { const nice = tOr(`tagNames.${v}`, v); return <div>{nice !== v && <Typography.Text strong>{nice} </Typography.Text>}<span className="gk-mono">{v}</span>{r.description && <Typography.Paragraph type="secondary" style={{ fontSize: 12, margin: 0 }} ellipsis={{ rows: 2, tooltip: r.description }}>{r.description}</Typography.Paragraph>}</div>; } },
        { title: t("tags.kind"), dataIndex: "kind", width: 100, render: (v: string) => <AntTag>{t(`tags.kinds.${v}`)}</AntTag> },
        { title: t("tags.category"), dataIndex: "category", width: 110, render: (v: string) => tOr(`tags.categories.${v}`, v) },
        { title: t("tags.coverage"), key: "coverage", render: (_: unknown, r) => <CoverageCell n={cov?.fields[`tags.${r.name}`]} total={cov?.total_profiles ?? 0} /> },
        { title: t("tags.computedAt"), dataIndex: "computed_at", width: 170, render: (v: string | null) => <span style={{ whiteSpace: "nowrap" }}>{dateTime(v)}</span> },
      ]} />
  );
}

function TraitTable({ traits, cov }: { traits: ReturnType<typeof useApi<{ traits: TraitPublic[] }>>; cov?: CoverageAll }) {
  const { t, dateTime } = useI18n();
  if (traits.error) return <ErrorState error={traits.error} onRetry={traits.reload} />;
  return (
    <Table<TraitPublic> rowKey="name" loading={traits.loading} dataSource={traits.data?.traits ?? []} locale={{ emptyText: t("tags.noTraits") }}
      pagination={{ pageSize: 20, hideOnSinglePage: true }}
      columns={[
        { title: t("tags.name"), dataIndex: "name", render: (v: string, r) => <div><span className="gk-mono">{v}</span>{r.description && <div><Typography.Text type="secondary" style={{ fontSize: 12 }}>{r.description}</Typography.Text></div>}</div> },
        { title: t("traits.computes"), key: "def", render: (_: unknown, r) => {
          const d = r.definition as Record<string, unknown>;
          return `${t(`traits.agg.${d.aggregate}`)}${d.property ? ` · ${d.property}` : ""}${d.event ? ` · ${d.event}` : ""}${d.source === "order_lines" ? ` · ${t("traits.orderLines")}` : ""}`;
        } },
        { title: t("tags.coverage"), key: "coverage", render: (_: unknown, r) => <CoverageCell n={cov?.fields[`traits.${r.name}`]} total={cov?.total_profiles ?? 0} /> },
        { title: t("traits.status"), dataIndex: "status", width: 100, render: (v: string) => <AntTag color={v === "computed" ? "green" : v === "failed" ? "red" : "default"}>{t(`traits.statuses.${v}`)}</AntTag> },
        { title: t("tags.computedAt"), dataIndex: "computed_at", width: 170, render: (v: string | null) => <span style={{ whiteSpace: "nowrap" }}>{dateTime(v)}</span> },
      ]} />
  );
}

function TagForm({ onDone }: { onDone: () => void }) {
  const { t } = useI18n();
  const { message } = App.useApp();
  const catalog = useCatalog();
  const [valueType, setValueType] = useState<"boolean" | "enum">("boolean");
  const [rules, setRules] = useState<{ value: string; rule: GroupCond }[]>([{ value: "", rule: emptyGroup() }]);
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (v: { name: string; category: string; description?: string }) => {
    const list = valueType === "boolean" ? rules.slice(0, 1) : rules;
    if (list.some((r) => !isComplete(r.rule)) || (valueType === "enum" && list.some((r) => !r.value.trim()))) {
      setError(new Error(t("tags.incomplete")));
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await api.raw("post", "/api/v1/tags", {
        name: v.name.trim(), kind: "rule", value_type: valueType, category: v.category, description: v.description ?? "",
        rules: list.map((r) => ({ value: valueType === "boolean" ? true : r.value.trim(), rule: clean(r.rule) })),
      });
      const r = await api.raw<{ profiles: number }>("post", `/api/v1/tags/${encodeURIComponent(v.name.trim())}/compute`);
      message.success(t("tags.created", { n: r.profiles }));
      onDone();
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(false);
    }
  };
  if (catalog.error) return <ErrorState error={catalog.error} onRetry={catalog.reload} />;
  if (!catalog.data) return null;
  return (
    <Form layout="vertical" onFinish={submit} initialValues={{ category: "consumption" }}>
      <Space wrap align="start">
        <Form.Item label={t("tags.name")} name="name" extra={t("tags.nameHelp")} rules={[{ required: true, pattern: /^[A-Za-z_\u4e00-\u9fff][\w\u4e00-\u9fff]{0,63}$/, message: t("tags.nameHelp") }]}>
          <Input style={{ width: 260 }} />
        </Form.Item>
        <Form.Item label={t("tags.category")} name="category">
          <Select style={{ width: 160 }} options={["fixed", "interests", "social", "consumption", "dynamic"].map((c) => ({ value: c, label: t(`tags.categories.${c}`) }))} />
        </Form.Item>
        <Form.Item label={t("tags.valueType")}>
          <Select style={{ width: 200 }} value={valueType} onChange={setValueType}
            options={[{ value: "boolean", label: t("tags.boolean") }, { value: "enum", label: t("tags.enum") }]} />
        </Form.Item>
      </Space>
      <Form.Item label={t("tags.description")} name="description"><Input /></Form.Item>
      {(valueType === "boolean" ? rules.slice(0, 1) : rules).map((r, i) => (
        <Card key={i} size="small" style={{ marginBottom: 12 }}
          title={valueType === "boolean" ? t("tags.whoGetsIt") : (
            <Space>
              <span>{t("tags.valueN", { n: i + 1 })}</span>
              <Input aria-label={t("tags.value")} placeholder={t("tags.value")} value={r.value} style={{ width: 180 }} onChange={(e) => setRules(rules.map((x, j) => (j === i ? { ...x, value: e.target.value } : x)))} />
            </Space>)}
          extra={valueType === "enum" && rules.length > 1 && <Button type="text" danger icon={<DeleteOutlined />} onClick={() => setRules(rules.filter((_, j) => j !== i))}>{t("builder.remove")}</Button>}>
          <RuleEditor value={r.rule} catalog={catalog.data!} onChange={(g) => setRules(rules.map((x, j) => (j === i ? { ...x, rule: g } : x)))} />
          <div style={{ marginTop: 12 }}><EstimatePanel rule={r.rule} /></div>
        </Card>
      ))}
      {valueType === "enum" && <Button icon={<PlusOutlined />} onClick={() => setRules([...rules, { value: "", rule: emptyGroup() }])} style={{ marginBottom: 12 }}>{t("tags.addValue")}</Button>}
      {valueType === "enum" && <Typography.Paragraph type="secondary">{t("tags.firstWins")}</Typography.Paragraph>}
      {error && <Alert type="error" showIcon role="alert" style={{ marginBottom: 12 }} message={error.message} description={error instanceof ApiError && error.field ? <span className="gk-mono">{error.field}</span> : undefined} />}
      <Button type="primary" htmlType="submit" loading={busy}>{t("tags.createAndCompute")}</Button>
    </Form>
  );
}

const AGGREGATES = ["count", "sum", "avg", "min", "max", "first", "last", "distinct_count", "most_frequent", "days_since_last"];

function TraitForm({ onDone }: { onDone: () => void }) {
  const { t } = useI18n();
  const { message } = App.useApp();
  const catalog = useCatalog();
  const [form] = Form.useForm();
  const event = Form.useWatch("event", form) as string | undefined;
  const aggregate = Form.useWatch("aggregate", form) as string | undefined;
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const props = catalog.data?.events.find((e) => e.event === event)?.properties ?? [];
  const needsProperty = aggregate && aggregate !== "count" && aggregate !== "days_since_last";
  const submit = async (v: { name: string; description?: string; event: string; aggregate: string; property?: string; last_days?: number }) => {
    setBusy(true);
    setError(null);
    try {
      const ptype = props.find((p) => p.name === v.property)?.type;
      const body: Record<string, unknown> = { name: v.name.trim(), description: v.description ?? "", source: "events", event: v.event, aggregate: v.aggregate };
      if (needsProperty && v.property) body.property = v.property;
      if (needsProperty && ptype && ["min", "max", "first", "last", "most_frequent"].includes(v.aggregate)) body.value_type = ptype === "number" ? "number" : "string";
      if (v.last_days) body.window = { last_days: v.last_days };
      await api.raw("post", "/api/v1/traits", body);
      const r = await api.raw<{ profiles_with_value: Record<string, number> }>("post", "/api/v1/traits/compute", { names: [v.name.trim()] });
      message.success(t("traits.created", { n: r.profiles_with_value?.[v.name.trim()] ?? 0 }));
      onDone();
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(false);
    }
  };
  if (catalog.error) return <ErrorState error={catalog.error} onRetry={catalog.reload} />;
  return (
    <Form form={form} layout="vertical" onFinish={submit} initialValues={{ aggregate: "count", last_days: 90 }}>
      <Form.Item label={t("tags.name")} name="name" extra={t("traits.nameHelp")} rules={[{ required: true, pattern: /^[A-Za-z_][\w]{0,63}$/, message: t("traits.nameHelp") }]}>
        <Input />
      </Form.Item>
      <Form.Item label={t("tags.description")} name="description"><Input /></Form.Item>
      <Form.Item label={t("builder.event")} name="event" rules={[{ required: true, message: t("builder.chooseEvent") }]}>
        <Select showSearch options={(catalog.data?.events ?? []).map((e) => ({ value: e.event, label: e.event }))} />
      </Form.Item>
      <Form.Item label={t("traits.aggregate")} name="aggregate" rules={[{ required: true }]}>
        <Select options={AGGREGATES.map((a) => ({ value: a, label: t(`traits.agg.${a}`) }))} />
      </Form.Item>
      {needsProperty && (
        <Form.Item label={t("builder.property")} name="property" rules={[{ required: true, message: t("traits.propertyRequired") }]}>
          <Select showSearch options={props.map((p) => ({ value: p.name, label: `${p.name} (${t(`traits.types.${p.type}`)})` }))} />
        </Form.Item>
      )}
      <Form.Item label={t("traits.window")} name="last_days" extra={t("traits.windowHelp")}>
        <InputNumber min={1} max={36500} addonAfter={t("builder.days")} />
      </Form.Item>
      {error && <Alert type="error" showIcon role="alert" style={{ marginBottom: 12 }} message={error.message} description={error instanceof ApiError && error.field ? <span className="gk-mono">{error.field}</span> : undefined} />}
      <Button type="primary" htmlType="submit" loading={busy}>{t("traits.createAndCompute")}</Button>
    </Form>
  );
}
