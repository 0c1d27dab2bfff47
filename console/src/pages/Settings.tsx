/** Channels and settings: the workspace's channels (create / edit with write-only credentials, send a
 * test), its API keys (list, create -- the secret shown once --, revoke), the send policy (caps,
 * quiet hours, time zone, exempt purposes), the identity rules as configured, and the workspace's
 * users with their roles (invite -- the initial password shown once --, change a role, remove).
 * Non-admins see the send policy and identity rules read-only, and no channels, keys or users.
 *
 * Channel forms are drawn from the channel classes' own declaration (GET /api/v1/console/channel-kinds:
 * the config's JSON Schema and the secret names), so a plugin channel gets a form without changes
 * here. Secrets are never returned by the API: a stored one shows as "set", and a field left empty
 * keeps it (PUT /api/v1/channels/{id} keeps omitted secrets). */
import {
  Alert, App, Badge, Button, Card, Col, Descriptions, Drawer, Empty, Form, Input, InputNumber, Modal, Popconfirm, Row,
  Select, Space, Switch, Table, Tabs, Tag, TimePicker, Typography,
} from "antd";
import { DeleteOutlined, EditOutlined, KeyOutlined, PlusOutlined, SendOutlined, StopOutlined, UserAddOutlined } from "@ant-design/icons";
import dayjs, { type Dayjs } from "dayjs";
import { useEffect, useMemo, useState } from "react";
import { useSearchParams } from "react-router-dom";
import { api, ApiError, type IdentityRules } from "../api/client";
import type { ApiKey, ChannelKind, ChannelPublic, JsonSchemaProp, SendPolicy, UserInvited, UserRole, WorkspaceUser } from "../api/types";
import { PageHead } from "../components/PageHead";
import { Async, EmptyState, ErrorState } from "../components/States";
import { useI18n } from "../i18n";
import { useSession } from "../session";
import { ROLES, useRole } from "../role";
import { useApi } from "../useApi";

const TABS = ["channels", "keys", "policy", "identity", "users"] as const;
type TabKey = (typeof TABS)[number];
const ADMIN_TABS: readonly TabKey[] = ["channels", "keys", "users"];

export function SettingsPage() {
  const { t } = useI18n();
  const { can } = useRole();
  const [params, setParams] = useSearchParams();
  const allowed = TABS.filter((k) => can("configure") || !ADMIN_TABS.includes(k));
  const tab = (allowed as readonly string[]).includes(params.get("tab") ?? "") ? (params.get("tab") as TabKey) : allowed[0];
  const items = [
    { key: "channels", label: t("settings.tabs.channels"), children: <ChannelsTab /> },
    { key: "keys", label: t("settings.tabs.keys"), children: <KeysTab /> },
    { key: "policy", label: t("settings.tabs.policy"), children: <PolicyTab /> },
    { key: "identity", label: t("settings.tabs.identity"), children: <IdentityTab /> },
    { key: "users", label: t("settings.tabs.users"), children: <UsersTab /> },
  ].filter((i) => (allowed as readonly string[]).includes(i.key));
  return (
    <div>
      <PageHead title={t("settings.title")} sub={t("settings.sub")} />
      <Tabs
        activeKey={tab}
        onChange={(k) => setParams({ tab: k }, { replace: true })}
        destroyOnHidden
        items={items}
      />
    </div>
  );
}

/** "短信 · twilio" / "SMS · twilio" */
function useKindLabel() {
  const { tOr } = useI18n();
  return (kind: string, provider: string) => `${tOr(`settings.kinds.${kind}`, kind)}${provider ? ` · ${provider}` : ""}`;
}

// -- channels --------------------------------------------------------------------------------------

function ChannelsTab() {
  const { t, tOr, dateTime } = useI18n();
  const kindLabel = useKindLabel();
  const channels = useApi((signal) => api.raw<ChannelPublic[]>("get", "/api/v1/channels", undefined, { signal }));
  const kinds = useApi((signal) => api.raw<ChannelKind[]>("get", "/api/v1/console/channel-kinds", undefined, { signal }));
  const [editing, setEditing] = useState<ChannelPublic | "new" | null>(null);
  const [testing, setTesting] = useState<ChannelPublic | null>(null);
  return (
    <Card
      title={t("settings.channels.title")}
      extra={<Button type="primary" icon={<PlusOutlined />} onClick={() => setEditing("new")} disabled={!kinds.data}>{t("settings.channels.new")}</Button>}
    >
      <Typography.Paragraph type="secondary">{t("settings.channels.help")}</Typography.Paragraph>
      <Async value={channels} rows={4}>
        {(list) => (
          <Table<ChannelPublic>
            size="middle" rowKey="channel_id" dataSource={list} pagination={false} data-testid="channels-table"
            locale={{ emptyText: <EmptyState text={t("settings.channels.empty")} /> }}
            columns={[
              { title: t("settings.channels.name"), dataIndex: "name", render: (v: string, c) => <Space direction="vertical" size={0}><Typography.Text strong>{v}</Typography.Text><span className="gk-mono">{c.channel_id}</span></Space> },
              { title: t("settings.channels.kind"), key: "kind", render: (_: unknown, c) => kindLabel(c.kind, c.provider) },
              {
                title: t("settings.channels.credentials"), key: "secrets",
                render: (_: unknown, c) => {
                  const kind = kinds.data?.find((k) => k.kind === c.kind && k.provider === c.provider);
                  const names = kind ? [...kind.secret_fields, ...kind.optional_secret_fields] : c.secrets_set;
                  if (!names.length) return <Typography.Text type="secondary">{t("settings.channels.noCredentials")}</Typography.Text>;
                  return <Space wrap size={4}>{names.map((n) => (
                    <Tag key={n} color={c.secrets_set.includes(n) ? "green" : "default"}>
                      {tOr(`settings.secrets.${n}`, n)}: {c.secrets_set.includes(n) ? t("settings.channels.set") : t("settings.channels.notSet")}
                    </Tag>
                  ))}</Space>;
                },
              },
              { title: t("settings.channels.status"), dataIndex: "status", render: (v: string) => <Badge status={v === "active" ? "success" : "default"} text={tOr(`settings.channels.statuses.${v}`, v)} /> },
              { title: t("settings.channels.updated"), dataIndex: "updated_at", render: (v: string) => dateTime(v) },
              {
                title: t("settings.actions"), key: "a", render: (_: unknown, c) => (
                  <Space>
                    <Button size="small" icon={<EditOutlined />} onClick={() => setEditing(c)} disabled={!kinds.data} aria-label={t("settings.channels.editOne", { name: c.name })}>{t("settings.edit")}</Button>
                    <Button size="small" icon={<SendOutlined />} onClick={() => setTesting(c)} aria-label={t("settings.channels.testOne", { name: c.name })}>{t("settings.channels.test")}</Button>
                  </Space>
                ),
              },
            ]}
          />
        )}
      </Async>
      {kinds.error && <ErrorState error={kinds.error} onRetry={kinds.reload} />}
      <Drawer
        open={editing !== null} width={560} destroyOnHidden onClose={() => setEditing(null)}
        title={editing === "new" ? t("settings.channels.new") : editing ? t("settings.channels.editTitle", { name: editing.name }) : ""}
      >
        {editing !== null && kinds.data && (
          <ChannelForm kinds={kinds.data} channel={editing === "new" ? null : editing}
            onSaved={() => { setEditing(null); channels.reload(); }} />
        )}
      </Drawer>
      <TestModal channel={testing} onClose={() => setTesting(null)} />
    </Card>
  );
}

type FieldKind = "number" | "integer" | "boolean" | "enum" | "string" | "json";

function fieldKind(p: JsonSchemaProp): FieldKind {
  if (p.enum) return "enum";
  const types = p.type ? [p.type] : (p.anyOf ?? []).map((a) => a.type).filter((x) => x && x !== "null");
  const ty = types[0];
  if (ty === "number") return "number";
  if (ty === "integer") return "integer";
  if (ty === "boolean") return "boolean";
  if (ty === "string") return "string";
  return "json";
}

function fieldValue(kind: FieldKind, v: unknown): unknown {
  if (v === undefined || v === null) return undefined;
  if (kind === "json") return JSON.stringify(v, null, 2);
  return v;
}

interface ChannelFormValues {
  name: string;
  type: string;
  config: Record<string, {} | undefined>;
  secrets: Record<string, string | undefined>;
}

function ChannelForm({ kinds, channel, onSaved }: { kinds: ChannelKind[]; channel: ChannelPublic | null; onSaved: () => void }) {
  const { t, tOr, lang } = useI18n();
  const { message } = App.useApp();
  const kindLabel = useKindLabel();
  const [form] = Form.useForm<ChannelFormValues>();
  const keyOf = (k: { kind: string; provider: string }) => `${k.kind}/${k.provider}`;
  const [type, setType] = useState<string>(channel ? keyOf(channel) : "");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | Error | null>(null);
  const kind = kinds.find((k) => keyOf(k) === type);
  const props = Object.entries(kind?.config_schema.properties ?? {});
  const required = new Set(kind?.config_schema.required ?? []);

  // a new kind's defaults (or the channel's stored config) as the form's values
  useEffect(() => {
    if (!kind) return;
    const source = channel && keyOf(channel) === type ? channel.config : {};
    const config: Record<string, unknown> = {};
    for (const [name, p] of props) config[name] = fieldValue(fieldKind(p), name in source ? source[name] : p.default);
    form.setFieldsValue({ config: config as ChannelFormValues["config"], secrets: {} });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [type]);

  const submit = async (v: ChannelFormValues) => {
    if (!kind) return;
    setBusy(true);
    setError(null);
    const config: Record<string, unknown> = {};
    for (const [name, p] of props) {
      const raw = v.config?.[name];
      if (raw === undefined || raw === null || raw === "") continue; // the channel's default
      const fk = fieldKind(p);
      if (fk === "json") {
        try {
          config[name] = JSON.parse(String(raw));
        } catch {
          form.setFields([{ name: ["config", name], errors: [t("settings.channels.badJson")] }]);
          setBusy(false);
          return;
        }
      } else config[name] = raw;
    }
    // only the secrets a user typed: the others keep their stored values
    const secrets = Object.fromEntries(Object.entries(v.secrets ?? {}).filter(([, x]) => typeof x === "string" && x !== ""));
    const body = { name: v.name, kind: kind.kind, provider: kind.provider, config, secrets };
    try {
      if (channel) await api.raw("put", `/api/v1/channels/${encodeURIComponent(channel.channel_id)}`, body);
      else await api.raw("post", "/api/v1/channels", body);
      message.success(t("settings.channels.saved", { name: v.name }));
      onSaved();
    } catch (e) {
      setError(e as Error);
      if (e instanceof ApiError && e.field) {
        const path = e.field.split(".");
        if (["name", "config", "secrets"].includes(path[0])) form.setFields([{ name: path as never, errors: [e.message] }]);
      }
    } finally {
      setBusy(false);
    }
  };

  const secretNames = kind ? [...kind.secret_fields.map((n) => [n, true] as const), ...kind.optional_secret_fields.map((n) => [n, false] as const)] : [];
  return (
    <Form form={form} layout="vertical" onFinish={submit} initialValues={{ name: channel?.name ?? "" }} data-testid="channel-form">
      {error && <Alert type="error" showIcon role="alert" style={{ marginBottom: 12 }} message={t("settings.channels.refused")}
        description={<>{error.message}{error instanceof ApiError && error.field ? <div className="gk-mono">{error.field}</div> : null}</>} />}
      <Form.Item label={t("settings.channels.kind")} required>
        <Select
          aria-label={t("settings.channels.kind")} value={type || undefined} onChange={setType} disabled={!!channel}
          placeholder={t("settings.channels.pickKind")} showSearch optionFilterProp="label"
          options={kinds.map((k) => ({ value: keyOf(k), label: kindLabel(k.kind, k.provider) }))}
        />
      </Form.Item>
      <Form.Item label={t("settings.channels.name")} name="name" rules={[{ required: true, message: t("settings.channels.nameRequired") }]}>
        <Input maxLength={200} />
      </Form.Item>
      {kind && (
        <>
          <Typography.Paragraph type="secondary" style={{ fontSize: 12 }}>
            {t("settings.channels.sendsTo", { channel: tOr(`channels.${kind.consent_channel}`, kind.consent_channel || "—"), address: tOr(`idTypes.${kind.address_type}`, tOr(`settings.addressTypes.${kind.address_type}`, kind.address_type)) })}
          </Typography.Paragraph>
          <Typography.Title level={5}>{t("settings.channels.settings")}</Typography.Title>
          {props.map(([name, p]) => {
            const fk = fieldKind(p);
            const label = tOr(`settings.fields.${name}`, p.title ?? name);
            const extra = lang === "en" ? p.description : undefined;
            const rules = required.has(name) ? [{ required: true, message: t("settings.channels.required", { field: label }) }] : [];
            if (fk === "boolean")
              return <Form.Item key={name} label={label} name={["config", name]} valuePropName="checked" extra={extra}><Switch /></Form.Item>;
            if (fk === "enum")
              return <Form.Item key={name} label={label} name={["config", name]} rules={rules} extra={extra}>
                <Select aria-label={label} options={(p.enum ?? []).map((x) => ({ value: x, label: x }))} />
              </Form.Item>;
            if (fk === "number" || fk === "integer")
              return <Form.Item key={name} label={label} name={["config", name]} rules={rules} extra={extra}>
                <InputNumber style={{ width: 200 }} precision={fk === "integer" ? 0 : undefined} min={p.minimum} max={p.maximum} />
              </Form.Item>;
            if (fk === "json")
              return <Form.Item key={name} label={label} name={["config", name]} rules={rules} extra={extra ?? t("settings.channels.jsonHint")}>
                <Input.TextArea rows={3} className="gk-mono" />
              </Form.Item>;
            return <Form.Item key={name} label={label} name={["config", name]} rules={rules} extra={extra}><Input /></Form.Item>;
          })}
          {secretNames.length > 0 && (
            <>
              <Typography.Title level={5}>{t("settings.channels.credentials")}</Typography.Title>
              <Typography.Paragraph type="secondary" style={{ fontSize: 12 }}>{t("settings.channels.writeOnly")}</Typography.Paragraph>
              {secretNames.map(([name, req]) => {
                const isSet = !!channel?.secrets_set.includes(name);
                const label = tOr(`settings.secrets.${name}`, name);
                return (
                  <Form.Item
                    key={name} name={["secrets", name]}
                    label={<Space size={6}>{label}{isSet ? <Tag color="green">{t("settings.channels.set")}</Tag> : req ? null : <Tag>{t("settings.channels.optional")}</Tag>}</Space>}
                    rules={req && !isSet ? [{ required: true, message: t("settings.channels.required", { field: label }) }] : []}
                    extra={isSet ? t("settings.channels.keepHint") : undefined}
                  >
                    <Input.Password autoComplete="new-password" placeholder={isSet ? t("settings.channels.replacePlaceholder") : ""} visibilityToggle={false} />
                  </Form.Item>
                );
              })}
            </>
          )}
        </>
      )}
      <Button type="primary" htmlType="submit" loading={busy} disabled={!kind}>{t("settings.save")}</Button>
    </Form>
  );
}

function TestModal({ channel, onClose }: { channel: ChannelPublic | null; onClose: () => void }) {
  const { t } = useI18n();
  const [form] = Form.useForm<{ to: string; subject?: string; text: string }>();
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; provider_message_id: string | null; reason: string | null } | null>(null);
  const [error, setError] = useState<Error | null>(null);
  useEffect(() => { setResult(null); setError(null); form.resetFields(); }, [channel, form]);
  const send = async (v: { to: string; subject?: string; text: string }) => {
    if (!channel) return;
    setBusy(true);
    setError(null);
    setResult(null);
    try {
      setResult(await api.raw("post", `/api/v1/channels/${encodeURIComponent(channel.channel_id)}/test`, { to: v.to, text: v.text, subject: v.subject || null }));
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal open={channel !== null} title={channel ? t("settings.channels.testTitle", { name: channel.name }) : ""} onCancel={onClose}
      okText={t("settings.channels.sendTest")} cancelText={t("common.cancel")} onOk={() => form.submit()} confirmLoading={busy} destroyOnHidden>
      <Typography.Paragraph type="secondary">{t("settings.channels.testHelp")}</Typography.Paragraph>
      <Form form={form} layout="vertical" onFinish={send} initialValues={{ text: t("settings.channels.testText") }}>
        <Form.Item label={t("settings.channels.testTo")} name="to" rules={[{ required: true, message: t("settings.channels.testToRequired") }]}><Input /></Form.Item>
        {channel?.kind === "email" && <Form.Item label={t("settings.channels.testSubject")} name="subject"><Input /></Form.Item>}
        <Form.Item label={t("settings.channels.testBody")} name="text" rules={[{ required: true }]}><Input.TextArea rows={3} /></Form.Item>
      </Form>
      {result && (result.ok
        ? <Alert type="success" showIcon role="status" data-testid="test-result" message={t("settings.channels.testOk")} description={result.provider_message_id ? <span className="gk-mono">{result.provider_message_id}</span> : undefined} />
        : <Alert type="error" showIcon role="alert" data-testid="test-result" message={t("settings.channels.testFailed")} description={result.reason} />)}
      {error && <ErrorState error={error} />}
    </Modal>
  );
}

// -- keys ------------------------------------------------------------------------------------------

function KeysTab() {
  const { t, dateTime } = useI18n();
  const { message } = App.useApp();
  const keys = useApi((signal) => api.raw<ApiKey[]>("get", "/api/v1/workspace/keys", undefined, { signal }));
  const [creating, setCreating] = useState<"write" | "admin" | null>(null);
  const [label, setLabel] = useState("");
  const [busy, setBusy] = useState(false);
  const [created, setCreated] = useState<{ kind: string; secret: string } | null>(null);
  const [showSecret, setShowSecret] = useState(false);
  const { current } = useSession();
  const [showRevoked, setShowRevoked] = useState(false);
  const create = async () => {
    if (!creating) return;
    setBusy(true);
    try {
      const r = await api.post("/api/v1/workspace/keys", { kind: creating, label: label.trim() });
      setCreated({ kind: r.kind, secret: r.secret });
      setShowSecret(true);
      setCreating(null);
      setLabel("");
      keys.reload();
    } catch (e) {
      message.error((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const revoke = async (k: ApiKey) => {
    try {
      await api.raw("delete", `/api/v1/workspace/keys/${encodeURIComponent(k.key_id)}`);
      message.success(t("settings.keys.revoked", { name: k.label || k.prefix }));
      keys.reload();
    } catch (e) {
      message.error((e as Error).message);
    }
  };
  const shown = (keys.data ?? []).filter((k) => showRevoked || !k.revoked_at);
  return (
    <Card
      title={t("settings.keys.title")}
      extra={<Space wrap>
        <Space size={6}><Switch size="small" checked={showRevoked} onChange={setShowRevoked} aria-label={t("settings.keys.showRevoked")} /><Typography.Text>{t("settings.keys.showRevoked")}</Typography.Text></Space>
        <Button type="primary" icon={<PlusOutlined />} onClick={() => setCreating("write")}>{t("settings.keys.newWrite")}</Button>
        <Button icon={<KeyOutlined />} onClick={() => setCreating("admin")}>{t("settings.keys.newAdmin")}</Button>
      </Space>}
    >
      <Typography.Paragraph type="secondary">{t("settings.keys.help")}</Typography.Paragraph>
      {keys.error ? <ErrorState error={keys.error} onRetry={keys.reload} /> : (
        <Table<ApiKey>
          size="middle" rowKey="key_id" loading={keys.loading && !keys.data} dataSource={shown} pagination={false} data-testid="keys-table"
          rowClassName={(k) => (k.revoked_at ? "gk-row-revoked" : "")}
          locale={{ emptyText: <EmptyState text={t("settings.keys.empty")} /> }}
          columns={[
            { title: t("settings.keys.label"), dataIndex: "label", render: (v: string) => v || <Typography.Text type="secondary">{t("settings.keys.noLabel")}</Typography.Text> },
            { title: t("settings.keys.kind"), dataIndex: "kind", render: (v: string) => <Tag color={v === "admin" ? "volcano" : "blue"}>{t(`settings.keys.kinds.${v}`)}</Tag> },
            { title: t("settings.keys.prefix"), dataIndex: "prefix", render: (v: string) => <span className="gk-mono">{v}…</span> },
            { title: t("settings.keys.created"), dataIndex: "created_at", render: (v: string) => dateTime(v) },
            { title: t("settings.keys.status"), dataIndex: "revoked_at", render: (v: string | null) => (v ? <Badge status="default" text={t("settings.keys.revokedAt", { when: dateTime(v) })} /> : <Badge status="success" text={t("settings.keys.live")} />) },
            {
              title: t("settings.actions"), key: "a", render: (_: unknown, k) => (k.revoked_at ? null : current && current.token.startsWith(k.prefix) && k.kind === "admin" ? (
                <Tag color="gold">{t("settings.keys.yours")}</Tag>
              ) : (
                <Popconfirm title={t("settings.keys.confirmRevoke", { name: k.label || k.prefix })} description={t("settings.keys.confirmRevokeHelp")}
                  okText={t("settings.keys.revoke")} okButtonProps={{ danger: true }} cancelText={t("common.cancel")} onConfirm={() => revoke(k)}>
                  <Button size="small" danger icon={<StopOutlined />} aria-label={t("settings.keys.revokeOne", { name: k.label || k.prefix })}>{t("settings.keys.revoke")}</Button>
                </Popconfirm>
              )),
            },
          ]}
        />
      )}
      <Modal open={creating !== null} title={creating ? t(`settings.keys.new${creating === "admin" ? "Admin" : "Write"}`) : ""}
        onCancel={() => setCreating(null)} onOk={create} confirmLoading={busy} okText={t("settings.keys.create")} cancelText={t("common.cancel")} destroyOnHidden>
        <Form layout="vertical" onFinish={create}>
          <Form.Item label={t("settings.keys.label")} htmlFor="gk-key-label" extra={t("settings.keys.labelHelp")}>
            <Input id="gk-key-label" value={label} onChange={(e) => setLabel(e.target.value)} maxLength={200} autoFocus onPressEnter={create} />
          </Form.Item>
        </Form>
      </Modal>
      <Modal open={showSecret} title={t("settings.keys.createdTitle")} onCancel={() => setShowSecret(false)} closable destroyOnHidden
        afterClose={() => setCreated(null)} footer={<Button type="primary" onClick={() => setShowSecret(false)}>{t("settings.keys.done")}</Button>}>
        <Alert type="warning" showIcon message={t("settings.keys.shownOnce")} style={{ marginBottom: 12 }} />
        <Typography.Paragraph copyable={{ text: created?.secret ?? "" }} className="gk-mono" data-testid="new-secret" style={{ fontSize: 14, wordBreak: "break-all" }}>
          {created?.secret}
        </Typography.Paragraph>
        {created?.kind === "write" && <Typography.Paragraph type="secondary">{t("settings.keys.writeUse")}</Typography.Paragraph>}
      </Modal>
    </Card>
  );
}

// -- send policy -----------------------------------------------------------------------------------

const CAP_KEYS = ["*", "email", "sms", "call", "wechat", "push", "mail"];

function zones(): string[] {
  const f = (Intl as unknown as { supportedValuesOf?: (k: string) => string[] }).supportedValuesOf;
  try {
    if (f) return f("timeZone");
  } catch {
    /* older browsers */
  }
  return ["Asia/Shanghai", "Asia/Hong_Kong", "Asia/Taipei", "Asia/Singapore", "Asia/Tokyo", "Europe/London", "Europe/Paris", "America/New_York", "America/Los_Angeles", "UTC"];
}

interface PolicyForm {
  timezone: string;
  caps: Record<string, { day: number | null; week: number | null }>;
  quiet: boolean;
  quiet_start: Dayjs | null;
  quiet_end: Dayjs | null;
  exempt_purposes: string[];
  tracking_base_url: string;
}

function PolicyTab() {
  const policy = useApi((signal) => api.raw<SendPolicy>("get", "/api/v1/send-policy", undefined, { signal }));
  return <Async value={policy} rows={8}>{(p) => <PolicyEditor policy={p} onSaved={policy.reload} />}</Async>;
}

function PolicyEditor({ policy, onSaved }: { policy: SendPolicy; onSaved: () => void }) {
  const { role, can } = useRole();
  const canConfigure = can("configure");
  const { t, tOr } = useI18n();
  const { message } = App.useApp();
  const [form] = Form.useForm<PolicyForm>();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const tzOptions = useMemo(() => zones().map((z) => ({ value: z, label: z })), []);
  const quiet = Form.useWatch("quiet", form);
  const initial: PolicyForm = {
    timezone: policy.timezone,
    caps: Object.fromEntries(CAP_KEYS.map((k) => [k, { day: policy.caps[k]?.day ?? null, week: policy.caps[k]?.week ?? null }])),
    quiet: policy.quiet_hours !== null,
    quiet_start: dayjs(`2000-01-01T${policy.quiet_hours?.start ?? "21:00:00"}`),
    quiet_end: dayjs(`2000-01-01T${policy.quiet_hours?.end ?? "08:00:00"}`),
    exempt_purposes: policy.exempt_purposes,
    tracking_base_url: policy.tracking_base_url,
  };
  const save = async (v: PolicyForm) => {
    setBusy(true);
    setError(null);
    const caps: SendPolicy["caps"] = {};
    for (const k of CAP_KEYS) {
      const c = v.caps?.[k];
      if (c && (c.day !== null && c.day !== undefined || c.week !== null && c.week !== undefined))
        caps[k] = { day: c.day ?? null, week: c.week ?? null };
    }
    const body: SendPolicy = {
      timezone: v.timezone,
      caps,
      quiet_hours: v.quiet && v.quiet_start && v.quiet_end ? { start: v.quiet_start.format("HH:mm:00"), end: v.quiet_end.format("HH:mm:00") } : null,
      exempt_purposes: v.exempt_purposes ?? [],
      tracking_base_url: v.tracking_base_url,
    };
    try {
      await api.raw("put", "/api/v1/send-policy", body);
      message.success(t("settings.policy.saved"));
      onSaved();
    } catch (e) {
      setError(e as Error);
      if (e instanceof ApiError && e.field) {
        const path = e.field.split(".").filter((p) => p !== "body");
        if (path[0] && path[0] in initial) form.setFields([{ name: path as never, errors: [e.message] }]);
      }
    } finally {
      setBusy(false);
    }
  };
  return (
    <Form form={form} layout="vertical" initialValues={initial} onFinish={save} data-testid="policy-form">
      {error && <Alert type="error" showIcon role="alert" style={{ marginBottom: 12 }} message={t("settings.policy.refused")} description={error.message} />}
      <Row gutter={[16, 16]}>
        <Col xs={24} xl={12}>
          <Card title={t("settings.policy.caps")} style={{ height: "100%" }}>
            <Typography.Paragraph type="secondary">{t("settings.policy.capsHelp")}</Typography.Paragraph>
            <table className="gk-caps">
              <thead><tr><th>{t("settings.policy.channel")}</th><th>{t("settings.policy.perDay")}</th><th>{t("settings.policy.perWeek")}</th></tr></thead>
              <tbody>
                {CAP_KEYS.map((k) => {
                  const name = k === "*" ? t("settings.policy.allChannels") : tOr(`channels.${k}`, k);
                  return (
                    <tr key={k}>
                      <th scope="row">{name}</th>
                      <td><Form.Item name={["caps", k, "day"]} noStyle><InputNumber min={0} precision={0} placeholder={t("settings.policy.noLimit")} aria-label={t("settings.policy.capLabel", { channel: name, per: t("settings.policy.perDay") })} /></Form.Item></td>
                      <td><Form.Item name={["caps", k, "week"]} noStyle><InputNumber min={0} precision={0} placeholder={t("settings.policy.noLimit")} aria-label={t("settings.policy.capLabel", { channel: name, per: t("settings.policy.perWeek") })} /></Form.Item></td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </Card>
        </Col>
        <Col xs={24} xl={12}>
          <Card title={t("settings.policy.timeTitle")} style={{ height: "100%" }}>
            <Form.Item label={t("settings.policy.timezone")} name="timezone" extra={t("settings.policy.timezoneHelp")} rules={[{ required: true }]}>
              <Select showSearch options={tzOptions} aria-label={t("settings.policy.timezone")} />
            </Form.Item>
            <Form.Item label={t("settings.policy.quiet")} name="quiet" valuePropName="checked" extra={t("settings.policy.quietHelp")}>
              <Switch />
            </Form.Item>
            {quiet !== false && (
              <Space wrap>
                <Form.Item label={t("settings.policy.quietStart")} name="quiet_start" rules={[{ required: true }]}>
                  <TimePicker format="HH:mm" minuteStep={5} allowClear={false} needConfirm={false} aria-label={t("settings.policy.quietStart")} />
                </Form.Item>
                <Form.Item label={t("settings.policy.quietEnd")} name="quiet_end" rules={[{ required: true }]}>
                  <TimePicker format="HH:mm" minuteStep={5} allowClear={false} needConfirm={false} aria-label={t("settings.policy.quietEnd")} />
                </Form.Item>
              </Space>
            )}
            <Form.Item label={t("settings.policy.exempt")} name="exempt_purposes" extra={t("settings.policy.exemptHelp")}>
              <Select mode="tags" aria-label={t("settings.policy.exempt")} tokenSeparators={[",", " "]}
                options={["transactional", "service", "marketing"].map((x) => ({ value: x, label: x }))} />
            </Form.Item>
            <Form.Item label={t("settings.policy.trackingUrl")} name="tracking_base_url" extra={t("settings.policy.trackingUrlHelp")} rules={[{ required: true }]}>
              <Input />
            </Form.Item>
          </Card>
        </Col>
      </Row>
      {!canConfigure && <Alert type="info" showIcon style={{ marginTop: 16 }} message={t("settings.readOnly", { role: t(`roles.${role}`) })} />}
      <Button type="primary" htmlType="submit" loading={busy} disabled={!canConfigure} style={{ marginTop: 16 }}>{t("settings.policy.save")}</Button>
    </Form>
  );
}

// -- identity rules --------------------------------------------------------------------------------

function IdentityTab() {
  const rules = useApi((signal) => api.get("/api/v1/workspace/identity-rules", { signal }));
  const [editing, setEditing] = useState(false);
  return (
    <Async value={rules} rows={8}>
      {(r: IdentityRules) => (editing
        ? <IdentityEditor rules={r} onDone={(saved) => { setEditing(false); if (saved) rules.reload(); }} />
        : <IdentityView rules={r} onEdit={() => setEditing(true)} />)}
    </Async>
  );
}

function IdentityView({ rules: r, onEdit }: { rules: IdentityRules; onEdit: () => void }) {
  const { t, tOr, num } = useI18n();
  const canConfigure = useRole().can("configure");
  return (
    <Row gutter={[16, 16]}>
      <Col xs={24}>
        <Alert type="info" showIcon message={t("settings.identity.help")}
          action={<Button icon={<EditOutlined />} onClick={onEdit} disabled={!canConfigure}>{t("settings.identity.edit")}</Button>} />
      </Col>
      <Col xs={24} xl={12}>
        <Card title={t("settings.identity.priority")}>
          <Typography.Paragraph type="secondary">{t("settings.identity.priorityHelp")}</Typography.Paragraph>
          <Table size="small" pagination={false} rowKey="type" data-testid="identity-priority"
            dataSource={(r.priority ?? []).map((type, i) => ({ type, rank: i + 1, limit: r.limits?.[type] }))}
            columns={[
              { title: "#", dataIndex: "rank", width: 48 },
              { title: t("settings.identity.type"), dataIndex: "type", render: (v: string) => <Space>{tOr(`idTypes.${v}`, v)}<span className="gk-mono">{v}</span></Space> },
              { title: t("settings.identity.limit"), dataIndex: "limit", render: (v: number | undefined) => (v === undefined ? "—" : num(v)) },
            ]} />
        </Card>
      </Col>
      <Col xs={24} xl={12}>
        <Card title={t("settings.identity.blocked")} style={{ marginBottom: 16 }}>
          <Typography.Paragraph type="secondary">{t("settings.identity.blockedHelp")}</Typography.Paragraph>
          {(r.blocked_values ?? []).length ? <Space wrap size={4} data-testid="identity-blocked">{(r.blocked_values ?? []).map((v) => <Tag key={v} className="gk-mono">{v}</Tag>)}</Space> : <Empty image={Empty.PRESENTED_IMAGE_SIMPLE} description={t("settings.identity.none")} />}
          {Object.entries(r.blocked_by_type ?? {}).length > 0 && (
            <Descriptions size="small" column={1} bordered style={{ marginTop: 12 }}>
              {Object.entries(r.blocked_by_type ?? {}).map(([type, vals]) => (
                <Descriptions.Item key={type} label={tOr(`idTypes.${type}`, type)}>
                  <Space wrap size={4}>{vals.map((v) => <Tag key={v} className="gk-mono">{v}</Tag>)}</Space>
                </Descriptions.Item>
              ))}
            </Descriptions>
          )}
        </Card>
        <Card title={t("settings.identity.custom")}>
          <Table size="small" pagination={false} rowKey="name" dataSource={r.custom ?? []}
            locale={{ emptyText: t("settings.identity.noCustom") }}
            columns={[
              { title: t("settings.identity.type"), dataIndex: "name", render: (v: string) => <span className="gk-mono">{v}</span> },
              { title: t("settings.identity.trait"), dataIndex: "trait", render: (v: string) => <span className="gk-mono">{v}</span> },
              { title: t("settings.identity.limit"), dataIndex: "limit" },
            ]} />
        </Card>
      </Col>
    </Row>
  );
}

/** Edit the priority (move up / down), the per-type limits and the blocked values; custom
 * identifier types are kept as they are (API only). */
function IdentityEditor({ rules, onDone }: { rules: IdentityRules; onDone: (saved: boolean) => void }) {
  const { t, tOr } = useI18n();
  const { message } = App.useApp();
  const [priority, setPriority] = useState<string[]>(rules.priority ?? []);
  const [limits, setLimits] = useState<Record<string, number>>({ ...(rules.limits ?? {}) });
  const [blocked, setBlocked] = useState<string[]>(rules.blocked_values ?? []);
  const [byType, setByType] = useState<Record<string, string[]>>({ ...(rules.blocked_by_type ?? {}) });
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const move = (i: number, d: -1 | 1) => setPriority((p) => {
    const q = [...p];
    [q[i], q[i + d]] = [q[i + d], q[i]];
    return q;
  });
  const save = async () => {
    setBusy(true);
    setError(null);
    const body = { ...rules, priority, limits, blocked_values: blocked,
      blocked_by_type: Object.fromEntries(Object.entries(byType).filter(([, v]) => v.length)) };
    try {
      await api.raw("put", "/api/v1/workspace/identity-rules", body);
      message.success(t("settings.identity.saved"));
      onDone(true);
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Card title={t("settings.identity.editTitle")} data-testid="identity-editor"
      extra={<Space><Button onClick={() => onDone(false)}>{t("common.cancel")}</Button><Button type="primary" loading={busy} onClick={save}>{t("settings.identity.save")}</Button></Space>}>
      <Alert type="warning" showIcon message={t("settings.identity.fromNow")} style={{ marginBottom: 12 }} />
      {error && <Alert type="error" showIcon role="alert" style={{ marginBottom: 12 }} message={t("settings.identity.refused")}
        description={<>{error.message}{error instanceof ApiError && error.field ? <div className="gk-mono">{error.field}</div> : null}</>} />}
      <Row gutter={[24, 16]}>
        <Col xs={24} xl={12}>
          <Typography.Title level={5}>{t("settings.identity.priority")}</Typography.Title>
          <table className="gk-caps">
            <thead><tr><th>#</th><th>{t("settings.identity.type")}</th><th>{t("settings.identity.limit")}</th><th>{t("settings.identity.order")}</th></tr></thead>
            <tbody>
              {priority.map((type, i) => {
                const name = tOr(`idTypes.${type}`, type);
                return (
                  <tr key={type}>
                    <td>{i + 1}</td>
                    <th scope="row">{name} <span className="gk-mono">{type}</span></th>
                    <td><InputNumber min={1} precision={0} value={limits[type]} aria-label={t("settings.identity.limitOf", { type: name })}
                      onChange={(v) => setLimits((l) => ({ ...l, [type]: v ?? 1 }))} /></td>
                    <td><Space size={4}>
                      <Button size="small" disabled={i === 0} onClick={() => move(i, -1)} aria-label={t("settings.identity.up", { type: name })}>↑</Button>
                      <Button size="small" disabled={i === priority.length - 1} onClick={() => move(i, 1)} aria-label={t("settings.identity.down", { type: name })}>↓</Button>
                    </Space></td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </Col>
        <Col xs={24} xl={12}>
          <Typography.Title level={5}>{t("settings.identity.blocked")}</Typography.Title>
          <Typography.Paragraph type="secondary">{t("settings.identity.blockedEdit")}</Typography.Paragraph>
          <Select mode="tags" value={blocked} onChange={setBlocked} style={{ width: "100%" }} tokenSeparators={[",", " "]}
            aria-label={t("settings.identity.blocked")} />
          {priority.map((type) => (
            <div key={type} style={{ marginTop: 10 }}>
              <Typography.Text>{t("settings.identity.blockedFor", { type: tOr(`idTypes.${type}`, type) })}</Typography.Text>
              <Select mode="tags" value={byType[type] ?? []} onChange={(v) => setByType((b) => ({ ...b, [type]: v }))} style={{ width: "100%" }}
                tokenSeparators={[",", " "]} aria-label={t("settings.identity.blockedFor", { type: tOr(`idTypes.${type}`, type) })} />
            </div>
          ))}
        </Col>
      </Row>
    </Card>
  );
}

// -- users -----------------------------------------------------------------------------------------

function UsersTab() {
  const { t, dateTime } = useI18n();
  const { message } = App.useApp();
  const { current } = useSession();
  const list = useApi((signal) => api.raw<WorkspaceUser[]>("get", "/api/v1/workspace/users", undefined, { signal }));
  const [inviting, setInviting] = useState(false);
  const [busy, setBusy] = useState(false);
  const [created, setCreated] = useState<UserInvited | null>(null);
  const [form] = Form.useForm<{ email: string; name: string; role: UserRole }>();
  const roleLabel = (r: string) => t(`roles.${r}`);
  const invite = async (v: { email: string; name: string; role: UserRole }) => {
    setBusy(true);
    try {
      const r = await api.raw<UserInvited>("post", "/api/v1/workspace/users", { email: v.email.trim(), name: (v.name ?? "").trim(), role: v.role });
      setInviting(false);
      form.resetFields();
      list.reload();
      if (r.initial_password) setCreated(r);
      else message.success(`${t("settings.users.added", { email: r.email, role: roleLabel(r.role) })} ${t("settings.users.existing", { email: r.email })}`);
    } catch (e) {
      const err = e as ApiError;
      if (err.field === "email" || err.field === "role" || err.field === "name") form.setFields([{ name: err.field, errors: [err.message] }]);
      else message.error(err.message);
    } finally {
      setBusy(false);
    }
  };
  const change = async (u: WorkspaceUser, role: UserRole) => {
    try {
      await api.raw("put", `/api/v1/workspace/users/${encodeURIComponent(u.user_id)}`, { role });
      message.success(t("settings.users.changed", { email: u.email, role: roleLabel(role) }));
    } catch (e) {
      message.error((e as Error).message);
    }
    list.reload();
  };
  const remove = async (u: WorkspaceUser) => {
    try {
      await api.raw("delete", `/api/v1/workspace/users/${encodeURIComponent(u.user_id)}`);
      message.success(t("settings.users.removed", { email: u.email }));
      list.reload();
    } catch (e) {
      message.error((e as Error).message);
    }
  };
  return (
    <Card title={t("settings.users.title")}
      extra={<Button type="primary" icon={<UserAddOutlined />} onClick={() => setInviting(true)}>{t("settings.users.invite")}</Button>}>
      <Typography.Paragraph type="secondary">{t("settings.users.help")}</Typography.Paragraph>
      {list.error ? <ErrorState error={list.error} onRetry={list.reload} /> : (
        <Table<WorkspaceUser>
          size="middle" rowKey="user_id" loading={list.loading && !list.data} dataSource={list.data ?? []} pagination={false} data-testid="users-table"
          locale={{ emptyText: <EmptyState text={t("settings.users.empty")} /> }}
          columns={[
            {
              title: t("settings.users.email"), dataIndex: "email", render: (v: string, u) => (
                <Space size={6}>
                  <Typography.Text strong>{v}</Typography.Text>
                  {current?.kind === "user" && current.email === v && <Tag color="gold">{t("settings.users.you")}</Tag>}
                  {u.disabled_at && <Tag>{t("settings.users.disabled")}</Tag>}
                </Space>
              ),
            },
            { title: t("settings.users.name"), dataIndex: "name" },
            {
              title: t("settings.users.role"), dataIndex: "role", render: (v: UserRole, u) => (
                <Select<UserRole> size="small" value={v} style={{ width: 140 }} aria-label={t("settings.users.roleOf", { email: u.email })}
                  onChange={(r) => change(u, r)} options={ROLES.map((r) => ({ value: r, label: roleLabel(r) })).reverse()} />
              ),
            },
            { title: t("settings.users.granted"), dataIndex: "granted_at", render: (v: string | null) => dateTime(v) },
            {
              title: t("settings.actions"), key: "a", render: (_: unknown, u) => (
                <Popconfirm title={t("settings.users.confirmRemove", { email: u.email })} description={t("settings.users.confirmRemoveHelp")}
                  okText={t("settings.users.remove")} okButtonProps={{ danger: true }} cancelText={t("common.cancel")} onConfirm={() => remove(u)}>
                  <Button size="small" danger icon={<DeleteOutlined />} aria-label={t("settings.users.removeOne", { email: u.email })}>{t("settings.users.remove")}</Button>
                </Popconfirm>
              ),
            },
          ]}
        />
      )}
      <Modal open={inviting} title={t("settings.users.invite")} onCancel={() => setInviting(false)} onOk={() => form.submit()}
        confirmLoading={busy} okText={t("settings.users.invite")} cancelText={t("common.cancel")} destroyOnHidden>
        <Form form={form} layout="vertical" onFinish={invite} initialValues={{ role: "viewer" }} requiredMark={false} data-testid="invite-form">
          <Form.Item label={t("settings.users.email")} name="email" rules={[{ required: true, whitespace: true, message: t("settings.users.emailRequired") }]}>
            <Input type="email" autoFocus maxLength={254} />
          </Form.Item>
          <Form.Item label={t("settings.users.name")} name="name">
            <Input maxLength={200} />
          </Form.Item>
          <Form.Item label={t("settings.users.role")} name="role">
            <Select<UserRole> options={ROLES.map((r) => ({ value: r, label: roleLabel(r) })).reverse()} />
          </Form.Item>
        </Form>
      </Modal>
      <Modal open={created !== null} title={t("settings.users.initialTitle")} onCancel={() => setCreated(null)} closable destroyOnHidden
        footer={<Button type="primary" onClick={() => setCreated(null)}>{t("settings.users.done")}</Button>}>
        <Alert type="warning" showIcon message={t("settings.users.shownOnce", { email: created?.email ?? "" })} style={{ marginBottom: 12 }} />
        <Typography.Paragraph copyable={{ text: created?.initial_password ?? "" }} className="gk-mono" data-testid="initial-password" style={{ fontSize: 14 }}>
          {created?.initial_password}
        </Typography.Paragraph>
      </Modal>
    </Card>
  );
}
