/** Campaigns: the list with status and the create form (segment, channel, A/B/n variants with zh /
 * en templates, holdout, schedule, throttle, conversion). The API checks a definition when it is
 * saved; its message is shown on the field it names. */
import { Alert, App, Button, Card, Col, DatePicker, Form, Input, InputNumber, Radio, Row, Select, Space, Table, Tag, Typography } from "antd";
import { DeleteOutlined, PlusOutlined } from "@ant-design/icons";
import type { Dayjs } from "dayjs";
import { useState } from "react";
import { Link, useNavigate } from "react-router-dom";
import { api, ApiError } from "../../api/client";
import type { Campaign, CampaignSummary, Channel, EventName, Segment } from "../../api/types";
import { PageHead } from "../../components/PageHead";
import { ErrorState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useRole } from "../../role";
import { useApi } from "../../useApi";

export const STATUS_COLOR: Record<string, string> = {
  draft: "default", scheduled: "blue", running: "processing", paused: "warning", done: "success", cancelled: "default", failed: "error",
  active: "success",
};

export function StatusTag({ status }: { status: string }) {
  const { tOr } = useI18n();
  return <Tag color={STATUS_COLOR[status] ?? "default"} data-testid="status" data-status={status}>{tOr(`campaigns.status.${status}`, status)}</Tag>;
}

export function CampaignsPage() {
  const { t, dateTime } = useI18n();
  const navigate = useNavigate();
  const { can } = useRole();
  const list = useApi((signal) => api.raw<CampaignSummary[]>("get", "/api/v1/campaigns", undefined, { signal }));
  return (
    <div>
      <PageHead title={t("campaigns.title")} sub={t("campaigns.sub")}
        extra={can("launch") && <Button type="primary" icon={<PlusOutlined />} onClick={() => navigate("/campaigns/new")}>{t("campaigns.new")}</Button>} />
      <Card>
        {list.error ? <ErrorState error={list.error} onRetry={list.reload} /> : (
          <Table<CampaignSummary> rowKey="campaign_id" loading={list.loading} dataSource={list.data ?? []}
            locale={{ emptyText: t("campaigns.empty") }} pagination={{ pageSize: 20, hideOnSinglePage: true }}
            columns={[
              { title: t("campaigns.name"), dataIndex: "name", render: (v: string, c) => <Link to={`/campaigns/${c.campaign_id}`}>{v}</Link> },
              { title: t("campaigns.statusCol"), dataIndex: "status", render: (s: string) => <StatusTag status={s} /> },
              { title: t("campaigns.run"), dataIndex: "run", align: "right", width: 90 },
              { title: t("campaigns.nextRun"), dataIndex: "next_run_at", render: (v: string | null) => dateTime(v) },
              { title: t("campaigns.created"), dataIndex: "created_at", render: (v: string) => dateTime(v) },
            ]} />
        )}
      </Card>
    </div>
  );
}

interface VariantForm {
  key: string;
  weight: number;
  zh?: string;
  en?: string;
  subject?: string;
}

interface CampaignForm {
  name: string;
  segment_id: string;
  channel_id: string;
  variants: VariantForm[];
  holdout_pct: number;
  when: "now" | "at";
  at?: Dayjs;
  throttle_per_minute?: number | null;
  conversion: "order" | "event";
  conversion_event?: string;
  attribution_days: number;
}

/** The form field an API error names (``variants[1].template.variants.zh.text`` -> variants.1.zh). */
function formField(field: string | null): (string | number)[] | null {
  if (!field) return null;
  const v = /^variants\[(\d+)\]\.(?:template\.variants\.(zh|en)\.(text|subject)|weight|key)/.exec(field);
  if (v) return ["variants", Number(v[1]), v[2] ? (v[3] === "subject" ? "subject" : v[2]) : field.endsWith("weight") ? "weight" : "key"];
  if (field.startsWith("audience")) return ["segment_id"];
  const top = field.split(".")[0];
  if (["name", "channel_id", "holdout_pct", "throttle_per_minute"].includes(top)) return [top];
  if (top === "schedule") return ["at"];
  if (top === "conversion") return ["attribution_days"];
  return null;
}

export function CampaignNewPage() {
  const { t, num } = useI18n();
  const { message } = App.useApp();
  const navigate = useNavigate();
  const [form] = Form.useForm<CampaignForm>();
  const [saving, setSaving] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const segs = useApi((signal) => api.raw<Segment[]>("get", "/api/v1/segments", undefined, { signal }));
  const chans = useApi((signal) => api.raw<Channel[]>("get", "/api/v1/channels", undefined, { signal }));
  const events = useApi((signal) => api.raw<{ events: EventName[] }>("get", "/api/v1/console/events", undefined, { signal }));
  const when = Form.useWatch("when", form);
  const conversion = Form.useWatch("conversion", form);
  const submit = async (v: CampaignForm) => {
    setSaving(true);
    setError(null);
    const body = {
      name: v.name.trim(),
      audience: { segment_id: v.segment_id },
      channel_id: v.channel_id,
      variants: v.variants.map((x) => {
        const variants: Record<string, { text: string; subject?: string }> = {};
        if (x.zh?.trim()) variants.zh = { text: x.zh, ...(x.subject?.trim() ? { subject: x.subject } : {}) };
        if (x.en?.trim()) variants.en = { text: x.en, ...(x.subject?.trim() ? { subject: x.subject } : {}) };
        return { key: x.key, weight: x.weight, template: { variants, default_language: variants.zh ? "zh" : "en" } };
      }),
      holdout_pct: v.holdout_pct,
      schedule: v.when === "at" && v.at ? { kind: "at", at: v.at.toISOString() } : { kind: "now" },
      throttle_per_minute: v.throttle_per_minute || null,
      conversion: v.conversion === "order" ? { order: true, attribution_days: v.attribution_days } : { event: v.conversion_event, attribution_days: v.attribution_days },
    };
    try {
      const c = await api.raw<Campaign>("post", "/api/v1/campaigns", body);
      message.success(t("campaigns.saved"));
      navigate(`/campaigns/${c.campaign_id}`);
    } catch (e) {
      setError(e as Error);
      const f = e instanceof ApiError ? formField(e.field) : null;
      if (f) form.setFields([{ name: f as never, errors: [(e as Error).message] }]);
    } finally {
      setSaving(false);
    }
  };
  const required = (what: string) => [{ required: true, message: t("campaigns.required", { what }) }];
  return (
    <div>
      <Link to="/campaigns">← {t("campaigns.back")}</Link>
      <PageHead title={t("campaigns.newTitle")} sub={t("campaigns.newSub")} />
      <Form<CampaignForm> form={form} layout="vertical" onFinish={submit} scrollToFirstError
        initialValues={{ holdout_pct: 10, when: "now", conversion: "order", attribution_days: 7, variants: [{ key: "A", weight: 1 }] }}>
        <Row gutter={16}>
          <Col xs={24} xl={14}>
            <Card title={t("campaigns.audienceCard")} style={{ marginBottom: 16 }}>
              <Form.Item label={t("campaigns.name")} name="name" rules={[{ required: true, whitespace: true, message: t("campaigns.required", { what: t("campaigns.name") }) }]}>
                <Input maxLength={200} />
              </Form.Item>
              <Form.Item label={t("campaigns.segment")} name="segment_id" rules={required(t("campaigns.segment"))} extra={t("campaigns.segmentHelp")}>
                <Select showSearch optionFilterProp="label" loading={segs.loading} placeholder={t("campaigns.segmentPlaceholder")}
                  options={(segs.data ?? []).map((s) => ({ value: s.segment_id, label: `${s.name} (${s.size === null ? t("segments.notComputed") : num(s.size)})` }))} />
              </Form.Item>
              <Form.Item label={t("campaigns.channel")} name="channel_id" rules={required(t("campaigns.channel"))}>
                <Select loading={chans.loading} placeholder={t("campaigns.channelPlaceholder")} notFoundContent={t("campaigns.noChannels")}
                  options={(chans.data ?? []).map((c) => ({ value: c.channel_id, label: `${c.name} · ${c.kind}`, disabled: c.status !== "active" }))} />
              </Form.Item>
            </Card>
            <Card title={t("campaigns.variantsCard")} style={{ marginBottom: 16 }} extra={<Typography.Text type="secondary">{t("campaigns.variablesHelp")}</Typography.Text>}>
              <Form.List name="variants">
                {(fields, { add, remove }) => (
                  <>
                    {fields.map((f, i) => (
                      <div key={f.key} className="gk-variant" role="group" aria-label={t("campaigns.variant", { n: i + 1 })}>
                        <Space align="start" wrap>
                          <Form.Item label={t("campaigns.variantKey")} name={[f.name, "key"]} rules={[{ required: true, pattern: /^[A-Za-z0-9_-]{1,40}$/, message: t("campaigns.keyRule") }]}>
                            <Input style={{ width: 90 }} />
                          </Form.Item>
                          <Form.Item label={t("campaigns.weight")} name={[f.name, "weight"]} rules={required(t("campaigns.weight"))}>
                            <InputNumber min={0.01} step={1} style={{ width: 100 }} />
                          </Form.Item>
                          <Form.Item label={t("campaigns.subject")} name={[f.name, "subject"]}>
                            <Input style={{ width: 260 }} placeholder={t("campaigns.subjectPlaceholder")} />
                          </Form.Item>
                          {fields.length > 1 && <Button aria-label={t("campaigns.removeVariant")} icon={<DeleteOutlined />} style={{ marginTop: 30 }} onClick={() => remove(f.name)} />}
                        </Space>
                        <Form.Item label={t("campaigns.textZh")} name={[f.name, "zh"]} dependencies={[["variants", f.name, "en"]]}
                          rules={[({ getFieldValue }) => ({ validator: (_, v) => (v?.trim() || getFieldValue(["variants", f.name, "en"])?.trim() ? Promise.resolve() : Promise.reject(new Error(t("campaigns.textRequired")))) })]}>
                          <Input.TextArea rows={2} placeholder="{{ attributes.name }}您好，…" />
                        </Form.Item>
                        <Form.Item label={t("campaigns.textEn")} name={[f.name, "en"]}>
                          <Input.TextArea rows={2} placeholder="Hi {{ attributes.name }}, …" />
                        </Form.Item>
                      </div>
                    ))}
                    <Button icon={<PlusOutlined />} onClick={() => add({ key: String.fromCharCode(65 + fields.length), weight: 1 })} disabled={fields.length >= 20}>{t("campaigns.addVariant")}</Button>
                  </>
                )}
              </Form.List>
            </Card>
          </Col>
          <Col xs={24} xl={10}>
            <Card title={t("campaigns.deliveryCard")} style={{ marginBottom: 16 }}>
              <Form.Item label={t("campaigns.holdout")} name="holdout_pct" extra={t("campaigns.holdoutHelp")} rules={required(t("campaigns.holdout"))}>
                <InputNumber min={0} max={90} step={1} addonAfter="%" style={{ width: 160 }} />
              </Form.Item>
              <Form.Item label={t("campaigns.schedule")} name="when">
                <Radio.Group options={[{ value: "now", label: t("campaigns.now") }, { value: "at", label: t("campaigns.at") }]} />
              </Form.Item>
              {when === "at" && (
                <Form.Item label={t("campaigns.sendAt")} name="at" rules={required(t("campaigns.sendAt"))}>
                  <DatePicker showTime />
                </Form.Item>
              )}
              <Form.Item label={t("campaigns.throttle")} name="throttle_per_minute" extra={t("campaigns.throttleHelp")}>
                <InputNumber min={1} step={100} style={{ width: 200 }} addonAfter={t("campaigns.perMinute")} />
              </Form.Item>
              <Form.Item label={t("campaigns.conversion")} name="conversion">
                <Radio.Group options={[{ value: "order", label: t("campaigns.convOrder") }, { value: "event", label: t("campaigns.convEvent") }]} />
              </Form.Item>
              {conversion === "event" && (
                <Form.Item label={t("campaigns.convEventName")} name="conversion_event" rules={required(t("campaigns.convEventName"))}>
                  <Select showSearch options={(events.data?.events ?? []).map((e) => ({ value: e.event, label: e.event }))} />
                </Form.Item>
              )}
              <Form.Item label={t("campaigns.attribution")} name="attribution_days" rules={required(t("campaigns.attribution"))}>
                <InputNumber min={1} max={90} addonAfter={t("insight.reports.daysUnit")} style={{ width: 160 }} />
              </Form.Item>
            </Card>
            {error && <Alert type="error" showIcon role="alert" style={{ marginBottom: 12 }} message={t("campaigns.refused")} description={<>{error.message}{error instanceof ApiError && error.field ? <div className="gk-mono">{error.field}</div> : null}</>} />}
            <Space>
              <Button type="primary" htmlType="submit" loading={saving}>{t("campaigns.saveDraft")}</Button>
              <Button onClick={() => navigate("/campaigns")}>{t("common.cancel")}</Button>
            </Space>
          </Col>
        </Row>
      </Form>
    </div>
  );
}
