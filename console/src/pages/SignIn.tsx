/** Sign in with an admin token (no user accounts yet); the token's workspace is added to the
 * switcher. */
import { Alert, Button, Card, Form, Input, List, Space, Typography } from "antd";
import { useState } from "react";
import { Navigate, useNavigate, useSearchParams } from "react-router-dom";
import { ApiError } from "../api/client";
import { useI18n } from "../i18n";
import { useSession } from "../session";
import { Brand, LangSwitch } from "../App";

export function SignIn() {
  const { t, dateTime } = useI18n();
  const { signIn, sessions, current, switchTo, expired } = useSession();
  const [params] = useSearchParams();
  const navigate = useNavigate();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  if (current && !params.get("add")) return <Navigate to="/" replace />;
  const submit = async ({ token }: { token: string }) => {
    setBusy(true);
    setError(null);
    try {
      await signIn(token.trim());
      navigate("/");
    } catch (e) {
      setError(e instanceof ApiError && e.status === 401 ? t("signIn.badToken") : (e as Error).message);
    } finally {
      setBusy(false);
    }
  };
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
        <Form layout="vertical" onFinish={submit} requiredMark={false}>
          <Form.Item label={t("signIn.token")} name="token" rules={[{ required: true, message: t("signIn.tokenRequired") }]}>
            <Input.Password autoFocus placeholder="gka_…" autoComplete="off" />
          </Form.Item>
          <Button type="primary" htmlType="submit" block loading={busy}>{t("signIn.submit")}</Button>
        </Form>
        <Typography.Paragraph type="secondary" style={{ marginTop: 16, fontSize: 12 }}>{t("signIn.note")}</Typography.Paragraph>
        {sessions.length > 0 && (
          <List
            size="small"
            header={<Typography.Text strong>{t("signIn.known")}</Typography.Text>}
            dataSource={sessions}
            renderItem={(s) => (
              <List.Item actions={[<Button key="go" type="link" onClick={() => { switchTo(s.workspace_id); navigate("/"); }}>{t("signIn.open")}</Button>]}>
                <List.Item.Meta title={s.name} description={t("signIn.since", { when: dateTime(s.signed_in_at) })} />
              </List.Item>
            )}
          />
        )}
      </Card>
    </div>
  );
}
