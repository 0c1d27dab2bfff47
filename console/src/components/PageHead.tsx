import { Typography } from "antd";
import type { ReactNode } from "react";

export function PageHead({ title, sub, extra }: { title: ReactNode; sub?: ReactNode; extra?: ReactNode }) {
  return (
    <div className="gk-page-head">
      <div>
        <Typography.Title level={2} style={{ fontSize: 22 }}>{title}</Typography.Title>
        {sub && <Typography.Text type="secondary">{sub}</Typography.Text>}
      </div>
      {extra}
    </div>
  );
}
