/** A page the current role may not use: says which role it needs instead of a form that can only
 * fail (the API refuses it anyway). */
import { Button, Result } from "antd";
import type { ReactNode } from "react";
import { useNavigate } from "react-router-dom";
import { useI18n } from "../i18n";
import { useRole, type Role } from "../role";

export function RoleGate({ need, children }: { need: Role; children: ReactNode }) {
  const { t } = useI18n();
  const { role } = useRole();
  const navigate = useNavigate();
  const ranks: Role[] = ["viewer", "analyst", "marketer", "admin"];
  if (ranks.indexOf(role) >= ranks.indexOf(need)) return <>{children}</>;
  return (
    <div data-testid="role-gate">
      <Result
        status="403"
        title={t("roleGate.title")}
        subTitle={t("roleGate.sub", { need: t(`roles.${need}`), role: t(`roles.${role}`) })}
        extra={<Button onClick={() => navigate(-1)}>{t("roleGate.back")}</Button>}
      />
    </div>
  );
}
