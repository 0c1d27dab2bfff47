/** Cross-sell rules: association rules X → Y of the latest affinity model with support, confidence
 * and lift, filtered by scope (baskets / customers), level (SKU / category), thresholds and an item;
 * from GET /api/v1/insights/affinity/rules; "run" runs POST /api/v1/insights/affinity/run. */
import { Card, Form, Input, InputNumber, Select, Space, Table, Tag, Typography } from "antd";
import { useState } from "react";
import { api, ApiError } from "../../api/client";
import type { AssociationRule, RuleList } from "../../api/types";
import { ModelRun } from "../../components/ModelRun";
import { PageHead } from "../../components/PageHead";
import { EmptyState, ErrorState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useApi } from "../../useApi";

interface Filters {
  scope: "basket" | "customer";
  level: "sku" | "category";
  min_support: number;
  min_confidence: number;
  min_lift: number;
  item: string;
}

export function CrossSellPage() {
  const { t, num, pct } = useI18n();
  const [f, setF] = useState<Filters>({ scope: "basket", level: "sku", min_support: 0, min_confidence: 0, min_lift: 1, item: "" });
  const rules = useApi<RuleList | null>(async (signal) => {
    try {
      return await api.raw<RuleList>("get", "/api/v1/insights/affinity/rules", undefined, {
        signal,
        query: { scope: f.scope, level: f.level, min_support: f.min_support, min_confidence: f.min_confidence, min_lift: f.min_lift, antecedent: f.item.trim() || undefined, limit: 500 },
      });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  }, [JSON.stringify(f)]);
  const set = (patch: Partial<Filters>) => setF((x) => ({ ...x, ...patch }));
  const items = (xs: string[]) => xs.map((x) => <Tag key={x} className="gk-mono">{x}</Tag>);
  return (
    <div>
      <PageHead title={t("insight.cross.title")} sub={t("insight.cross.sub")}
        extra={<ModelRun model="affinity" run={() => api.raw("post", "/api/v1/insights/affinity/run", {})} onDone={rules.reload} />} />
      <Card>
        <Form layout="inline" style={{ marginBottom: 16, rowGap: 8 }}>
          <Form.Item label={t("insight.cross.scope")} htmlFor="cs-scope">
            <Select id="cs-scope" style={{ width: 150 }} value={f.scope} onChange={(v) => set({ scope: v })}
              options={[{ value: "basket", label: t("insight.cross.basket") }, { value: "customer", label: t("insight.cross.customer") }]} />
          </Form.Item>
          <Form.Item label={t("insight.cross.level")} htmlFor="cs-level">
            <Select id="cs-level" style={{ width: 120 }} value={f.level} onChange={(v) => set({ level: v })}
              options={[{ value: "sku", label: t("insight.cross.sku") }, { value: "category", label: t("insight.cross.category") }]} />
          </Form.Item>
          <Form.Item label={t("insight.cross.minSupport")} htmlFor="cs-sup">
            <InputNumber id="cs-sup" min={0} max={1} step={0.005} value={f.min_support} onChange={(v) => set({ min_support: v ?? 0 })} />
          </Form.Item>
          <Form.Item label={t("insight.cross.minConfidence")} htmlFor="cs-conf">
            <InputNumber id="cs-conf" min={0} max={1} step={0.05} value={f.min_confidence} onChange={(v) => set({ min_confidence: v ?? 0 })} />
          </Form.Item>
          <Form.Item label={t("insight.cross.minLift")} htmlFor="cs-lift">
            <InputNumber id="cs-lift" min={0} step={0.5} value={f.min_lift} onChange={(v) => set({ min_lift: v ?? 0 })} />
          </Form.Item>
          <Form.Item label={t("insight.cross.item")} htmlFor="cs-item">
            <Input.Search id="cs-item" allowClear style={{ width: 180 }} placeholder={t("insight.cross.itemPlaceholder")} onSearch={(v) => set({ item: v })} />
          </Form.Item>
        </Form>
        {rules.error ? <ErrorState error={rules.error} onRetry={rules.reload} /> : rules.data === null ? <EmptyState text={t("insight.cross.empty")} /> : (
          <>
            {rules.data && <Typography.Paragraph type="secondary">{t("insight.cross.summary", { n: num(rules.data.matched), tx: num(rules.data.transactions), v: rules.data.version })}{rules.data.matched > rules.data.rules.length ? ` ${t("insight.cross.shown", { n: num(rules.data.rules.length) })}` : ""}</Typography.Paragraph>}
            <Table<AssociationRule> size="small" loading={rules.loading} dataSource={rules.data?.rules ?? []}
              rowKey={(r) => `${r.antecedent.join("+")}>${r.consequent.join("+")}`}
              locale={{ emptyText: t("insight.cross.noMatch") }}
              pagination={{ pageSize: 20, hideOnSinglePage: true, showTotal: (n) => t("common.total", { n }) }}
              columns={[
                { title: t("insight.cross.if"), dataIndex: "antecedent", render: items },
                { title: t("insight.cross.then"), dataIndex: "consequent", render: items },
                { title: t("insight.cross.support"), dataIndex: "support", align: "right", sorter: (a, b) => a.support - b.support, render: (x: number) => pct(x, 2) },
                { title: t("insight.cross.confidence"), dataIndex: "confidence", align: "right", sorter: (a, b) => a.confidence - b.confidence, render: (x: number) => pct(x, 1) },
                { title: t("insight.cross.lift"), dataIndex: "lift", align: "right", defaultSortOrder: "descend", sorter: (a, b) => a.lift - b.lift, render: (x: number) => num(x, 2) },
                { title: t("insight.cross.count"), dataIndex: "count", align: "right", render: (x: number) => num(x) },
              ]} />
            <Space><Typography.Text type="secondary" style={{ fontSize: 12 }}>{t("insight.cross.help")}</Typography.Text></Space>
          </>
        )}
      </Card>
    </div>
  );
}
