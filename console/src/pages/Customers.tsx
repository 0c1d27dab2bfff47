/** Customer search by any identifier type of the workspace (GET /api/v1/profiles/lookup). */
import { Alert, Button, Card, Form, Input, Select, Space, Typography } from "antd";
import { SearchOutlined } from "@ant-design/icons";
import { useState } from "react";
import { useNavigate } from "react-router-dom";
import { api, ApiError } from "../api/client";
import { PageHead } from "../components/PageHead";
import { Async } from "../components/States";
import { useI18n } from "../i18n";
import { useApi } from "../useApi";

export function CustomersPage() {
  const { t, tOr } = useI18n();
  const navigate = useNavigate();
  const rules = useApi((signal) => api.get("/api/v1/workspace/identity-rules", { signal }));
  const [error, setError] = useState<{ type: "info" | "error"; text: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const search = async ({ type, value }: { type: string; value: string }) => {
    setBusy(true);
    setError(null);
    try {
      const p = await api.raw<{ profile_id: string }>("get", "/api/v1/profiles/lookup", undefined, { query: { [type]: value.trim() } });
      navigate(`/customers/${p.profile_id}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) setError({ type: "info", text: t("customers.notFound", { type: tOr(`idTypes.${type}`, type), value }) });
      else setError({ type: "error", text: (e as Error).message });
    } finally {
      setBusy(false);
    }
  };
  return (
    <div>
      <PageHead title={t("customers.title")} sub={t("customers.sub")} />
      <Card>
        <Async value={rules} rows={2}>
          {(r) => {
            const types = [...(r.priority ?? []), ...(r.custom ?? []).map((c) => c.name)];
            return (
              <Form layout="inline" onFinish={search} initialValues={{ type: types.includes("phone") ? "phone" : types[0] }} style={{ rowGap: 12 }}>
                <Form.Item label={t("customers.idType")} name="type" rules={[{ required: true }]}>
                  <Select style={{ width: 200 }} options={types.map((x) => ({ value: x, label: tOr(`idTypes.${x}`, x) }))} />
                </Form.Item>
                <Form.Item label={t("customers.idValue")} name="value" rules={[{ required: true, whitespace: true, message: t("customers.valueRequired") }]}>
                  <Input style={{ width: 300 }} placeholder={t("customers.placeholder")} allowClear />
                </Form.Item>
                <Form.Item>
                  <Button type="primary" htmlType="submit" icon={<SearchOutlined />} loading={busy}>{t("customers.search")}</Button>
                </Form.Item>
              </Form>
            );
          }}
        </Async>
        {error && <Alert style={{ marginTop: 16 }} type={error.type} showIcon message={error.text} role="status" />}
        <Space direction="vertical" style={{ marginTop: 16 }}>
          <Typography.Text type="secondary">{t("customers.hint")}</Typography.Text>
        </Space>
      </Card>
    </div>
  );
}
