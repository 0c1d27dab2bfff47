/** The segment builder: edit a rule visually, see its live size (POST /api/v1/segments/estimate) and
 * why a sample profile is or is not in it, then save (and compute the first snapshot). */
import { Affix, Alert, App, Button, Card, Col, Form, Input, Progress, Row, Select, Space, Statistic, Switch, Typography } from "antd";
import { useEffect, useMemo, useRef, useState } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api, ApiError } from "../api/client";
import type { Estimate, EventName, FieldInfo, Segment, Tag } from "../api/types";
import { PageHead } from "../components/PageHead";
import { Async } from "../components/States";
import { useI18n } from "../i18n";
import { clean, isComplete, asRootGroup, type GroupCond } from "../rules/model";
import { RuleEditor, type Catalog } from "../rules/RuleEditor";
import { ExplanationTree } from "../rules/RuleSummary";
import { useApi } from "../useApi";

export function useCatalog() {
  return useApi<Catalog>(async (signal) => {
    const [fields, events, tags] = await Promise.all([
      api.raw<FieldInfo[]>("get", "/api/v1/fields", undefined, { signal }),
      api.raw<{ events: EventName[] }>("get", "/api/v1/console/events", undefined, { signal }),
      api.raw<Tag[]>("get", "/api/v1/tags", undefined, { signal }),
    ]);
    return { fields, events: events.events, tags };
  });
}

export function SegmentBuilderPage() {
  const { segmentId } = useParams();
  const catalog = useCatalog();
  const existing = useApi<Segment | null>((signal) => (segmentId ? api.raw<Segment>("get", `/api/v1/segments/${encodeURIComponent(segmentId)}`, undefined, { signal }) : Promise.resolve(null)), [segmentId]);
  return (
    <Async value={catalog} rows={10}>
      {(cat) => <Async value={existing} rows={4}>{(seg) => <Builder catalog={cat} segment={seg} />}</Async>}
    </Async>
  );
}

/** Debounced live estimate of a complete draft rule. */
export function useEstimate(rule: GroupCond, sampleId: string | null) {
  const [state, setState] = useState<{ est?: Estimate; error?: ApiError | Error; loading: boolean }>({ loading: false });
  const body = useMemo(() => (isComplete(rule) ? JSON.stringify(clean(rule)) : null), [rule]);
  const seq = useRef(0);
  useEffect(() => {
    if (!body) {
      setState({ loading: false });
      return;
    }
    const n = ++seq.current;
    setState((s) => ({ ...s, loading: true }));
    const timer = setTimeout(() => {
      api
        .post("/api/v1/segments/estimate", { rule: JSON.parse(body), sample: 3, explain_profiles: sampleId ? [sampleId] : [] })
        .then((est) => n === seq.current && setState({ est: est as unknown as Estimate, loading: false }))
        .catch((error: Error) => n === seq.current && setState({ error, loading: false }));
    }, 450);
    return () => clearTimeout(timer);
  }, [body, sampleId]);
  return { ...state, complete: body !== null };
}

export function EstimatePanel({ rule, onSample }: { rule: GroupCond; onSample?: (id: string | null) => void }) {
  const { t, num, pct } = useI18n();
  const [sample, setSample] = useState<string | null>(null);
  const { est, error, loading, complete } = useEstimate(rule, sample);
  const explained = est?.explanations.find((e) => e.profile_id === sample) ?? est?.explanations[0];
  const choices = Array.from(new Set([...(sample ? [sample] : []), ...(est?.examples ?? [])]));
  return (
    <Card title={t("builder.estimate")} data-testid="estimate-card">
      {!complete && <Typography.Paragraph type="secondary">{rule.conditions.length ? t("builder.incomplete") : t("builder.startHint")}</Typography.Paragraph>}
      {error && <Alert type="error" showIcon role="alert" message={t("builder.ruleError")} description={<>{error.message}{error instanceof ApiError && error.field ? <div className="gk-mono">{error.field}</div> : null}</>} />}
      {complete && !error && est && (
        <>
          <Statistic title={t("builder.size")} value={num(est.size)} valueStyle={{ color: "#8a6210" }} suffix={<span data-testid="estimate-size" data-size={est.size} />} />
          {est.total_profiles ? (
            <>
              <Progress percent={Math.round((est.size / est.total_profiles) * 1000) / 10} showInfo={false} strokeColor="#c8961e" aria-label={t("builder.share")} />
              <Typography.Text type="secondary">{t("builder.ofTotal", { p: pct(est.size / est.total_profiles), total: num(est.total_profiles), ms: num(est.took_ms, 0) })}</Typography.Text>
            </>
          ) : null}
        </>
      )}
      {loading && <Typography.Paragraph type="secondary" style={{ marginTop: 8 }}>{t("builder.estimating")}</Typography.Paragraph>}
      {complete && est && (
        <div style={{ marginTop: 16 }}>
          <Typography.Text strong>{t("builder.explainTitle")}</Typography.Text>
          <Select showSearch allowClear style={{ width: "100%", margin: "8px 0" }} aria-label={t("builder.sampleProfile")}
            placeholder={t("builder.samplePlaceholder")} value={sample ?? undefined}
            onSearch={undefined}
            options={choices.map((c) => ({ value: c, label: c }))}
            onChange={(v?: string) => { setSample(v ?? null); onSample?.(v ?? null); }}
            dropdownRender={(menu) => (
              <>
                {menu}
                <Input.Search size="small" placeholder={t("builder.pasteId")} enterButton={t("builder.explain")} style={{ padding: 8 }}
                  onSearch={(v) => v.trim() && setSample(v.trim())} onKeyDown={(e) => e.stopPropagation()} />
              </>
            )} />
          {explained ? (
            <>
              <Typography.Paragraph style={{ marginBottom: 4 }}>
                <Link to={`/customers/${explained.profile_id}`} className="gk-mono">{explained.profile_id}</Link>{" "}
                {explained.error ? null : explained.matched ? <Typography.Text type="success">{t("builder.inSegment")}</Typography.Text> : <Typography.Text type="danger">{t("builder.notInSegment")}</Typography.Text>}
              </Typography.Paragraph>
              <ExplanationTree e={explained} />
            </>
          ) : <Typography.Text type="secondary">{t("builder.noExamples")}</Typography.Text>}
        </div>
      )}
    </Card>
  );
}

function Builder({ catalog, segment }: { catalog: Catalog; segment: Segment | null }) {
  const { t } = useI18n();
  const { message } = App.useApp();
  const navigate = useNavigate();
  const [rule, setRule] = useState<GroupCond>(() => asRootGroup(segment?.rule));
  const [saving, setSaving] = useState(false);
  const [saveError, setSaveError] = useState<ApiError | Error | null>(null);
  const [form] = Form.useForm();
  const save = async (v: { name: string; description?: string; realtime: boolean }) => {
    if (!isComplete(rule)) {
      setSaveError(new Error(t("builder.incomplete")));
      return;
    }
    setSaving(true);
    setSaveError(null);
    try {
      const body = { name: v.name.trim(), description: v.description ?? "", realtime: v.realtime, rule: clean(rule) };
      const saved = segment
        ? await api.raw<Segment>("patch", `/api/v1/segments/${encodeURIComponent(segment.segment_id)}`, body)
        : await api.raw<Segment>("post", "/api/v1/segments", body);
      await api.raw("post", `/api/v1/segments/${encodeURIComponent(saved.segment_id)}/compute`);
      message.success(t("builder.saved"));
      navigate(`/segments/${saved.segment_id}`);
    } catch (e) {
      setSaveError(e as Error);
    } finally {
      setSaving(false);
    }
  };
  return (
    <div>
      <Link to={segment ? `/segments/${segment.segment_id}` : "/segments"}>← {t("segment.back")}</Link>
      <PageHead title={segment ? t("builder.editTitle", { name: segment.name }) : t("builder.title")} sub={t("builder.sub")} />
      <Row gutter={[16, 16]}>
        <Col xs={24} xl={16}>
          <Card title={t("builder.rule")} style={{ marginBottom: 16 }}>
            <RuleEditor value={rule} onChange={setRule} catalog={catalog} />
          </Card>
          <Card title={t("builder.saveTitle")}>
            <Form form={form} layout="vertical" onFinish={save} initialValues={{ name: segment?.name ?? "", description: segment?.description ?? "", realtime: segment?.realtime ?? true }}>
              <Form.Item label={t("builder.name")} name="name" rules={[{ required: true, whitespace: true, message: t("builder.nameRequired") }]}>
                <Input maxLength={150} placeholder={t("builder.namePlaceholder")} />
              </Form.Item>
              <Form.Item label={t("builder.description")} name="description">
                <Input.TextArea rows={2} maxLength={2000} />
              </Form.Item>
              <Form.Item label={t("builder.realtime")} name="realtime" valuePropName="checked" extra={t("builder.realtimeHelp")}>
                <Switch />
              </Form.Item>
              {saveError && <Alert type="error" showIcon style={{ marginBottom: 12 }} role="alert" message={saveError.message} description={saveError instanceof ApiError && saveError.field ? <span className="gk-mono">{saveError.field}</span> : undefined} />}
              <Space>
                <Button type="primary" htmlType="submit" loading={saving}>{segment ? t("builder.saveVersion") : t("builder.save")}</Button>
                <Button onClick={() => navigate(-1)}>{t("common.cancel")}</Button>
              </Space>
            </Form>
          </Card>
        </Col>
        <Col xs={24} xl={8}>
          <Affix offsetTop={80}>
            <div><EstimatePanel rule={rule} /></div>
          </Affix>
        </Col>
      </Row>
    </div>
  );
}
