/** RFM: the 5×5 recency × frequency grid (profiles per cell, coloured by count, named by group) and
 * the groups with their sizes; "run / refit" runs POST /api/v1/insights/rfm/run. */
import { Card, Col, Row, Table, Typography } from "antd";
import { useMemo } from "react";
import { api } from "../../api/client";
import type { RFMGrid } from "../../api/types";
import { Chart, escapeHtml } from "../../components/Chart";
import { ModelRun } from "../../components/ModelRun";
import { PageHead } from "../../components/PageHead";
import { Async, EmptyState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useApi } from "../../useApi";

export function RfmPage() {
  const { t } = useI18n();
  const grid = useApi((signal) => api.raw<RFMGrid>("get", "/api/v1/console/rfm-grid", undefined, { signal }));
  return (
    <div>
      <PageHead title={t("insight.rfm.title")} sub={t("insight.rfm.sub")}
        extra={<ModelRun model="rfm" run={() => api.raw("post", "/api/v1/insights/rfm/run", {})} onDone={grid.reload} />} />
      <Async value={grid} rows={8}>
        {(g) => (g.scored === 0 ? <Card><EmptyState text={t("insight.rfm.empty")} /></Card> : <RfmBody g={g} />)}
      </Async>
    </div>
  );
}

function RfmBody({ g }: { g: RFMGrid }) {
  const { t, tOr, num, pct, lang } = useI18n();
  const name = (key: string) => {
    const info = g.groups.find((x) => x.group === key);
    return info ? (lang === "zh-CN" ? info.zh : info.en) : key;
  };
  const max = Math.max(1, ...g.cells.map((c) => c.profiles));
  const option = useMemo(() => ({
    tooltip: { formatter: (p: { data: [number, number, number, string] }) => `${escapeHtml(name(p.data[3]))}<br/>R=${p.data[1] + 1} · F=${p.data[0] + 1}: ${num(p.data[2])}` },
    grid: { left: 64, right: 24, top: 16, bottom: 64 },
    xAxis: { type: "category", name: t("insight.rfm.fAxis"), nameLocation: "middle", nameGap: 32, data: ["1", "2", "3", "4", "5"], splitArea: { show: true } },
    yAxis: { type: "category", name: t("insight.rfm.rAxis"), nameLocation: "middle", nameGap: 40, data: ["1", "2", "3", "4", "5"], splitArea: { show: true } },
    visualMap: { min: 0, max, calculable: false, orient: "horizontal", left: "center", bottom: 0, itemHeight: 120, inRange: { color: ["#fbf3df", "#e0b84f", "#a8770f"] }, show: false },
    series: [{
      type: "heatmap",
      data: g.cells.map((c) => [c.f - 1, c.r - 1, c.profiles, c.group]),
      label: { show: true, formatter: (p: { data: [number, number, number, string] }) => `${name(p.data[3])}\n${num(p.data[2])}`, fontSize: 11, lineHeight: 15 },
      itemStyle: { borderColor: "#fff", borderWidth: 2 },
    }],
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }), [g, lang]);
  const rows = [...g.groups].sort((a, b) => b.profiles - a.profiles);
  return (
    <Row gutter={[16, 16]}>
      <Col xs={24} xl={15}>
        <Card title={t("insight.rfm.grid")} extra={<Typography.Text type="secondary">{t("insight.rfm.scored", { n: num(g.scored) })}</Typography.Text>}>
          <Chart option={option} height={460} label={t("insight.rfm.grid")} />
        </Card>
      </Col>
      <Col xs={24} xl={9}>
        <Card title={t("insight.rfm.groups")}>
          <Table rowKey="group" size="small" pagination={false} dataSource={rows}
            columns={[
              { title: t("insight.rfm.group"), dataIndex: "group", render: (k: string, r) => (<div><Typography.Text strong>{name(k)}</Typography.Text><div><Typography.Text type="secondary" style={{ fontSize: 12 }}>{tOr(`rfm.desc.${k}`, r.description)}</Typography.Text></div></div>) },
              { title: t("insight.profiles"), dataIndex: "profiles", align: "right", render: (n: number) => num(n) },
              { title: t("insight.share"), key: "share", align: "right", render: (_: unknown, r) => pct(r.profiles / g.scored) },
            ]} />
        </Card>
      </Col>
    </Row>
  );
}
