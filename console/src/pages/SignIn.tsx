/** Sign in with e-mail and password (the user's granted workspaces join the switcher, each with its
 * role) or with an admin token (its workspace, as admin). */
import { Alert, Button, Card, Form, Input, List, Space, Tabs, Tag, Typography } from "antd";
import { useState } from "react";
import { Navigate, useNavigate, useSearchParams } from "react-router-dom";
import { ApiError } from "../api/client";
import { useI18n } from "../i18n";
import { useSession } from "../session";
import { Brand, LangSwitch } from "../App";

export function SignIn() {
  const { t, dateTime } = useI18n();
  const { signIn, signInUser, sessions, current, switchTo, expired } = useSession();
  const [params] = useSearchParams();
  const navigate = useNavigate();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [method, setMethod] = useState<"user" | "token">("user");
  if (current && !params.get("add")) return <Navigate to="/" replace />;
  const run = async (work: () => Promise<unknown>, explain: (e: unknown) => string) => {
    setBusy(true);
    setError(null);
    try {
      await work();
      navigate("/");
    } catch (e) {
      setError(explain(e));
    } finally {
      setBusy(false);
    }
  };
  const submitToken = ({ token }: { token: string }) =>
    run(() => signIn(token.trim()), (e) => (e instanceof ApiError && e.status === 401 ? t("signIn.badToken") : (e as Error).message));
  const submitUser = ({ email, password }: { email: string; password: string }) =>
    run(() => signInUser(email.trim(), password), (e) => {
      if (e instanceof ApiError && e.status === 401) return t("signIn.badPassword");
      if (e instanceof ApiError && e.status === 429) return t("signIn.tooMany");
      if ((e as Error).message === "no-workspace") return t("signIn.noWorkspace");
      return (e as Error).message;
    });
  return (
    <div className="gk-signin">
      <Card style={{ width: 440, boxShadow: "0 8px 28px rgba(0,0,0,.08)" }}>
        <Space style={{ width: "100%", justifyContent: "space-between", marginBottom: 12 }}>
          <Brand />
          <LangSwitch />
        </Space>
        <Typography.Title level={3} style={{ marginTop: 8 }}>{t("signIn.title")}</Typography.Title>
        <Typography.Paragraph type="secondary">{t("signIn.help")}</Typography.Paragraph>
        {expired && <Alert type="warning" showIcon style={{ marginBottom: 12 }} message={t("signIn.expired", { name: expired })} />}
        {error && <Alert type="error" showIcon style={{ marginBottom: 12 }} message={error} role="alert" />}
        <Tabs
          activeKey={method}
          destroyOnHidden
          onChange={(k) => { setMethod(k as "user" | "token"); setError(null); }}
          items={[
            {
              key: "user", label: t("signIn.tabUser"), children: (
                <>
                  <Form layout="vertical" onFinish={submitUser} requiredMark={false}>
                    <Form.Item label={t("signIn.email")} name="email" rules={[{ required: true, whitespace: true, message: t("signIn.emailRequired") }]}>
                      <Input type="email" autoFocus autoComplete="username" placeholder="name@example.com" />
                    </Form.Item>
                    <Form.Item label={t("signIn.password")} name="password" rules={[{ required: true, message: t("signIn.passwordRequired") }]}>
                      <Input.Password autoComplete="current-password" />
                    </Form.Item>
                    <Button type="primary" htmlType="submit" block loading={busy}>{t("signIn.submit")}</Button>
                  </Form>
                  <Typography.Paragraph type="secondary" style={{ marginTop: 16, fontSize: 12 }}>{t("signIn.noteUser")}</Typography.Paragraph>
                </>
              ),
            },
            {
              key: "token", label: t("signIn.tabToken"), children: (
                <>
                  <Form layout="vertical" onFinish={submitToken} requiredMark={false}>
                    <Form.Item label={t("signIn.token")} name="token" rules={[{ required: true, message: t("signIn.tokenRequired") }]}>
                      <Input.Password autoFocus placeholder="gka_…" autoComplete="off" />
                    </Form.Item>
                    <Button type="primary" htmlType="submit" block loading={busy}>{t("signIn.submit")}</Button>
                  </Form>
                  <Typography.Paragraph type="secondary" style={{ marginTop: 16, fontSize: 12 }}>{t("signIn.note")}</Typography.Paragraph>
                </>
              ),
            },
          ]}
        />
        {sessions.length > 0 && (
          <List
            size="small"
            header={<Typography.Text strong>{t("signIn.known")}</Typography.Text>}
            dataSource={sessions}
            renderItem={(s) => (
              <List.Item actions={[<Button key="go" type="link" onClick={() => { switchTo(s.workspace_id); navigate("/"); }}>{t("signIn.open")}</Button>]}>
                <List.Item.Meta
                  title={<Space size={6}>{s.name}<Tag>{t(`roles.${s.role}`)}</Tag></Space>}
                  description={(s.email ? s.email + " · " : "") + t("signIn.since", { when: dateTime(s.signed_in_at) })}
                />
              </List.Item>
            )}
          />
        )}
      </Card>
    </div>
  );
}
