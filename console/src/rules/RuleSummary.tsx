/** A read-only, human sentence per clause of a rule, and the clause-by-clause explanation of why a
 * profile is (not) selected. */
import { Tag, Typography } from "antd";
import { CheckCircleFilled, CloseCircleFilled } from "@ant-design/icons";
import type { ReactNode } from "react";
import { useI18n, type I18n } from "../i18n";
import type { Explanation } from "../api/types";
import type { Condition, PropertyFilter, Window } from "./model";

function val(v: unknown, i18n: I18n): string {
  if (v === null || v === undefined) return "";
  if (Array.isArray(v)) return v.map((x) => val(x, i18n)).join(i18n.lang === "zh-CN" ? "、" : ", ");
  if (typeof v === "object" && v && "days_ago" in v) return i18n.t("summary.daysAgo", { n: (v as { days_ago: number }).days_ago });
  if (typeof v === "boolean") return v ? i18n.t("common.yes") : i18n.t("common.no");
  return String(v);
}

function windowText(w: Window | null | undefined, i18n: I18n): string {
  if (!w) return i18n.t("summary.allTime");
  if (w.last_days !== undefined) return i18n.t("summary.lastDays", { n: w.last_days });
  if (w.since) return i18n.t(`builder.sinceOpt.${w.since}`);
  return i18n.t("summary.between", { start: w.start ?? "…", end: w.end ?? "…" });
}

function filters(where: PropertyFilter[] | undefined, i18n: I18n): string {
  if (!where?.length) return "";
  return " (" + where.map((f) => `${f.property} ${i18n.t(`ops.${f.op}`)} ${val(f.value, i18n)}`.trim()).join(i18n.lang === "zh-CN" ? "，" : ", ") + ")";
}

export function sentence(c: Condition, i18n: I18n): string {
  const { t, tOr } = i18n;
  switch (c.kind) {
    case "attribute":
      return `${tOr(`fields.${c.field}`, c.field)} ${t(`ops.${c.op}`)} ${val(c.value, i18n)}`.trim();
    case "event": {
      const did = c.did === false ? t("builder.didNot") : t("builder.did");
      const count = c.did !== false && c.count ? ` ${t(`builder.count.${c.count.op}`)} ${c.count.n} ${t("builder.times")}` : "";
      return `${windowText(c.window, i18n)} ${did} ${c.event ?? c.type}${filters(c.where, i18n)}${count}`;
    }
    case "sequence":
      return `${windowText(c.window, i18n)} ${c.did === false ? t("builder.didNot") : t("builder.did")} ` +
        c.steps.map((s) => `${s.event}${filters(s.where, i18n)}`).join(" → ") + ` (${t("summary.within", { n: c.within_days })})`;
    case "not":
      return `${t("builder.not")} (${sentence(c.condition, i18n)})`;
    default:
      return c.kind === "and" ? t("builder.and") : t("builder.or");
  }
}

function Node({ c, i18n }: { c: Condition; i18n: I18n }): ReactNode {
  if (c.kind === "and" || c.kind === "or") {
    return (
      <div>
        <Tag color={c.kind === "and" ? "blue" : "gold"}>{c.kind === "and" ? i18n.t("builder.and") : i18n.t("builder.or")}</Tag>
        <ul style={{ margin: "4px 0", paddingLeft: 20 }}>{c.conditions.map((x, i) => <li key={i}><Node c={x} i18n={i18n} /></li>)}</ul>
      </div>
    );
  }
  return <Typography.Text>{sentence(c, i18n)}</Typography.Text>;
}

export function RuleSummary({ rule }: { rule: unknown }) {
  const i18n = useI18n();
  return <div data-testid="rule-summary"><Node c={rule as Condition} i18n={i18n} /></div>;
}

function detail(e: Explanation, i18n: I18n): string {
  const { t, num, dateTime } = i18n;
  const parts: string[] = [];
  if (e.kind === "attribute") parts.push(t("explain.seen", { v: e.seen === undefined || e.seen === null ? t("explain.missing") : val(e.seen, i18n) }));
  if (e.kind === "event") {
    parts.push(t("explain.count", { n: num(e.seen_count as number) }));
    if (e.last_seen) parts.push(t("explain.last", { when: dateTime(e.last_seen as string) }));
  }
  if (e.kind === "sequence" && Array.isArray(e.chain)) parts.push(t("explain.chain", { n: (e.chain as unknown[]).length }));
  return parts.join(" · ");
}

function clauseText(e: Explanation, i18n: I18n): string {
  if (e.kind === "attribute") return sentence({ kind: "attribute", field: e.field as string, op: e.op as string, value: e.value as never }, i18n);
  if (e.kind === "event") {
    const [op, n] = String(e.needed ?? "").split(" ");
    const needed = op && n !== undefined ? `${i18n.t(`builder.count.${op}`)} ${n} ${i18n.t("builder.times")}` : String(e.needed ?? "");
    return `${e.event ?? e.type} (${needed})`;
  }
  if (e.kind === "sequence") return i18n.t("builder.kind.sequence");
  if (e.kind === "not") return i18n.t("builder.not");
  return e.kind === "and" ? i18n.t("builder.and") : i18n.t("builder.or");
}

function ExplainNode({ e, i18n }: { e: Explanation; i18n: I18n }): ReactNode {
  const icon = e.matched ? <CheckCircleFilled style={{ color: "#389e0d" }} aria-label={i18n.t("explain.matched")} /> : <CloseCircleFilled style={{ color: "#cf1322" }} aria-label={i18n.t("explain.notMatched")} />;
  const kids = e.conditions ?? (e.condition ? [e.condition] : []);
  const d = detail(e, i18n);
  return (
    <li>
      {icon} <Typography.Text>{clauseText(e, i18n)}</Typography.Text>
      {d && <Typography.Text type="secondary"> — {d}</Typography.Text>}
      {kids.length > 0 && <ul>{kids.map((k, i) => <ExplainNode key={i} e={k} i18n={i18n} />)}</ul>}
    </li>
  );
}

export function ExplanationTree({ e }: { e: Explanation }) {
  const i18n = useI18n();
  if (e.error) return <Typography.Text type="danger">{e.error}</Typography.Text>;
  return <div className="gk-explain"><ul style={{ paddingLeft: 0 }}><ExplainNode e={e} i18n={i18n} /></ul></div>;
}
