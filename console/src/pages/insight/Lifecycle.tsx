/** Lifecycle: customers per stage and the stage transitions of the latest run (a Sankey from the
 * previous stage to the current one), from GET /api/v1/insights/lifecycle/summary; "run" runs
 * POST /api/v1/insights/lifecycle/run. */
import { Card, Col, Row, Statistic, Typography } from "antd";
import { useMemo } from "react";
import { api, ApiError } from "../../api/client";
import type { LifecycleSummary } from "../../api/types";
import { Chart, PALETTE } from "../../components/Chart";
import { ModelRun } from "../../components/ModelRun";
import { PageHead } from "../../components/PageHead";
import { Async, EmptyState } from "../../components/States";
import { useI18n } from "../../i18n";
import { useApi } from "../../useApi";

export function LifecyclePage() {
  const { t } = useI18n();
  const sum = useApi<LifecycleSummary | null>(async (signal) => {
    try {
      return await api.raw<LifecycleSummary>("get", "/api/v1/insights/lifecycle/summary", undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  });
  return (
    <div>
      <PageHead title={t("insight.lifecycle.title")} sub={t("insight.lifecycle.sub")}
        extra={<ModelRun model="lifecycle" run={() => api.raw("post", "/api/v1/insights/lifecycle/run", {})} onDone={sum.reload} />} />
      <Async value={sum} rows={8}>{(s) => (s ? <Body s={s} /> : <Card><EmptyState text={t("insight.lifecycle.empty")} /></Card>)}</Async>
    </div>
  );
}

function Body({ s }: { s: LifecycleSummary }) {
  const { t, tOr, num, pct, lang } = useI18n();
  const stageName = (k: string) => {
    if (k === "none") return t("insight.lifecycle.none");
    const st = s.stages.find((x) => x.stage === k);
    return st ? (lang === "zh-CN" ? st.zh : st.en) : k;
  };
  const order = s.order.length ? s.order : s.stages.map((x) => x.stage);
  const color = (k: string) => PALETTE[Math.max(0, order.indexOf(k)) % PALETTE.length];
  const stages = [...s.stages].sort((a, b) => order.indexOf(a.stage) - order.indexOf(b.stage));
  const bars = useMemo(() => ({
    tooltip: { trigger: "axis" },
    grid: { left: 48, right: 16, top: 16, bottom: 32 },
    xAxis: { type: "category", data: stages.map((x) => stageName(x.stage)) },
    yAxis: { type: "value", name: t("insight.profiles") },
    series: [{ type: "bar", data: stages.map((x) => ({ value: x.profiles, itemStyle: { color: color(x.stage) } })), label: { show: true, position: "top" } }],
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }), [s, lang]);
  const links = Object.entries(s.transitions).flatMap(([from, tos]) =>
    Object.entries(tos).filter(([, n]) => n > 0).map(([to, n]) => ({ source: `${stageName(from)} ·${t("insight.lifecycle.before")}`, target: `${stageName(to)} ·${t("insight.lifecycle.now")}`, value: n, from, to })));
  const sankey = useMemo(() => {
    const names = new Map<string, string>();
    links.forEach((l) => { names.set(l.source, l.from); names.set(l.target, l.to); });
    return {
      tooltip: { trigger: "item" },
      series: [{
        type: "sankey", left: 16, right: 120, top: 16, bottom: 16, nodeGap: 12, emphasis: { focus: "adjacent" },
        data: [...names.entries()].map(([name, k]) => ({ name, itemStyle: { color: k === "none" ? "#c0c4cc" : color(k) } })),
        links: links.map(({ source, target, value }) => ({ source, target, value })),
        lineStyle: { color: "gradient", opacity: 0.35 },
        label: { fontSize: 12 },
      }],
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [s, lang]);
  return (
    <Row gutter={[16, 16]}>
      <Col xs={24}>
        <Card size="small">
          <Row gutter={16}>
            <Col xs={12} md={6}><Statistic title={t("insight.lifecycle.customers")} value={num(s.customers)} /></Col>
            <Col xs={12} md={6}><Statistic title={t("insight.lifecycle.staged")} value={num(s.staged)} /></Col>
            <Col xs={12} md={6}><Statistic title={t("insight.lifecycle.changed")} value={num(s.changed)} suffix={<Typography.Text type="secondary" style={{ fontSize: 13 }}>{pct(s.staged ? s.changed / s.staged : null)}</Typography.Text>} /></Col>
            <Col xs={12} md={6}><Statistic title={t("insight.model")} value={`v${s.version}`} /></Col>
          </Row>
        </Card>
      </Col>
      <Col xs={24} xl={10}>
        <Card title={t("insight.lifecycle.stages")}>
          <Chart option={bars} height={320} label={t("insight.lifecycle.stages")} />
          <ul className="gk-legend-list">
            {stages.map((x) => <li key={x.stage}><Typography.Text strong>{stageName(x.stage)}</Typography.Text> <Typography.Text type="secondary">{tOr(`lifecycleDesc.${x.stage}`, x.description)}</Typography.Text></li>)}
          </ul>
        </Card>
      </Col>
      <Col xs={24} xl={14}>
        <Card title={t("insight.lifecycle.transitions")}>
          {links.length ? <Chart option={sankey} height={420} label={t("insight.lifecycle.transitions")} /> : <EmptyState text={t("insight.lifecycle.noTransitions")} />}
        </Card>
      </Col>
    </Row>
  );
}
