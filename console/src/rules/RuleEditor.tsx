/** The visual rule builder: AND/OR groups of attribute, event and sequence conditions, each of which
 * can be negated, edited with pickers (never JSON). The value it edits is the rule JSON itself. */
import { Button, DatePicker, Input, InputNumber, Select, Space, Switch, Tag as AntTag, Tooltip, Typography } from "antd";
import { DeleteOutlined, PlusOutlined } from "@ant-design/icons";
import dayjs from "dayjs";
import { createContext, useContext, useMemo, type ReactNode } from "react";
import { useI18n } from "../i18n";
import type { EventName, FieldInfo, FieldType, Tag } from "../api/types";
import {
  MULTI_OPS,
  NO_VALUE_OPS,
  OPS_BY_TYPE,
  emptyAttribute,
  emptyEvent,
  emptyGroup,
  emptySequence,
  type AttrValue,
  type AttributeCond,
  type Condition,
  type EventCond,
  type GroupCond,
  type PropertyFilter,
  type Scalar,
  type SequenceCond,
  type Window,
} from "./model";

export interface Catalog {
  fields: FieldInfo[];
  events: EventName[];
  tags: Tag[];
}
const CatalogCtx = createContext<Catalog>({ fields: [], events: [], tags: [] });
const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const SOURCES = ["profile", "orders", "attributes", "traits", "tags", "scores"];

export function RuleEditor({ value, onChange, catalog }: { value: GroupCond; onChange: (g: GroupCond) => void; catalog: Catalog }) {
  return (
    <CatalogCtx.Provider value={catalog}>
      <GroupEditor value={value} onChange={(g) => onChange(g as GroupCond)} depth={0} />
    </CatalogCtx.Provider>
  );
}

function GroupEditor({ value, onChange, depth }: { value: GroupCond; onChange: (c: Condition) => void; depth: number }) {
  const { t } = useI18n();
  const set = (i: number, c: Condition) => onChange({ ...value, conditions: value.conditions.map((x, j) => (j === i ? c : x)) });
  const remove = (i: number) => onChange({ ...value, conditions: value.conditions.filter((_, j) => j !== i) });
  const add = (c: Condition) => onChange({ ...value, conditions: [...value.conditions, c] });
  return (
    <div className={`gk-group gk-depth-${depth % 2}`} role="group" aria-label={t("builder.group")}>
      <Space wrap style={{ marginBottom: 8 }}>
        <Typography.Text strong>{t("builder.match")}</Typography.Text>
        <Select
          aria-label={t("builder.logic")}
          value={value.kind}
          style={{ width: 190 }}
          onChange={(k) => onChange({ ...value, kind: k })}
          options={[
            { value: "and", label: t("builder.and") },
            { value: "or", label: t("builder.or") },
          ]}
        />
      </Space>
      {value.conditions.length === 0 && (
        <Typography.Paragraph type="secondary" style={{ margin: "4px 0 8px" }}>
          {t("builder.emptyGroup")}
        </Typography.Paragraph>
      )}
      {value.conditions.map((c, i) => (
        <div key={i}>
          {i > 0 && (
            <div className="gk-joiner">
              <AntTag color={value.kind === "and" ? "blue" : "gold"}>{value.kind === "and" ? t("builder.andShort") : t("builder.orShort")}</AntTag>
            </div>
          )}
          <NegatableRow value={c} onChange={(x) => set(i, x)} onRemove={() => remove(i)} depth={depth} />
        </div>
      ))}
      <Space wrap style={{ marginTop: 8 }}>
        <Button icon={<PlusOutlined />} onClick={() => add(emptyAttribute())}>{t("builder.addAttribute")}</Button>
        <Button icon={<PlusOutlined />} onClick={() => add(emptyEvent())}>{t("builder.addEvent")}</Button>
        <Button icon={<PlusOutlined />} onClick={() => add(emptySequence())}>{t("builder.addSequence")}</Button>
        {depth < 3 && (
          <Button icon={<PlusOutlined />} onClick={() => add(emptyGroup(value.kind === "and" ? "or" : "and"))}>
            {t("builder.addGroup")}
          </Button>
        )}
      </Space>
    </div>
  );
}

function NegatableRow({ value, onChange, onRemove, depth }: { value: Condition; onChange: (c: Condition) => void; onRemove: () => void; depth: number }) {
  const { t } = useI18n();
  const negated = value.kind === "not";
  const inner = value.kind === "not" ? value.condition : value;
  const setInner = (c: Condition) => onChange(negated ? { kind: "not", condition: c } : c);
  const kindLabel = t(`builder.kind.${inner.kind === "or" ? "and" : inner.kind}`);
  return (
    <div className={`gk-cond gk-cond-${inner.kind}${negated ? " gk-negated" : ""}`}>
      <div className="gk-cond-head">
        <Space>
          <AntTag color={negated ? "red" : "default"}>{negated ? `${t("builder.not")} · ${kindLabel}` : kindLabel}</AntTag>
          <Tooltip title={t("builder.negateHelp")}>
            <Space size={4}>
              <Switch
                size="small"
                checked={negated}
                aria-label={t("builder.negate")}
                onChange={(on) => onChange(on ? { kind: "not", condition: inner } : inner)}
              />
              <Typography.Text type="secondary">{t("builder.negate")}</Typography.Text>
            </Space>
          </Tooltip>
        </Space>
        <Button type="text" danger icon={<DeleteOutlined />} onClick={onRemove} aria-label={t("builder.remove")}>
          {t("builder.remove")}
        </Button>
      </div>
      <ConditionBody value={inner} onChange={setInner} depth={depth} />
    </div>
  );
}

function ConditionBody({ value, onChange, depth }: { value: Condition; onChange: (c: Condition) => void; depth: number }) {
  switch (value.kind) {
    case "and":
    case "or":
      return <GroupEditor value={value} onChange={onChange} depth={depth + 1} />;
    case "attribute":
      return <AttributeEditor value={value} onChange={onChange} />;
    case "event":
      return <EventEditor value={value} onChange={onChange} />;
    case "sequence":
      return <SequenceEditor value={value} onChange={onChange} />;
    case "not":
      return <NegatableRow value={value.condition} onChange={(c) => onChange({ kind: "not", condition: c })} onRemove={() => {}} depth={depth} />;
  }
}

// -- attribute ------------------------------------------------------------------------------------

function useFieldOptions() {
  const { fields } = useContext(CatalogCtx);
  const { t, tOr } = useI18n();
  return useMemo(
    () =>
      SOURCES.map((src) => ({
        label: t(`builder.source.${src}`),
        title: src,
        options: fields
          .filter((f) => f.field.startsWith(src + "."))
          .map((f) => {
            const name = f.field.slice(src.length + 1);
            const nice = tOr(`fields.${f.field}`, f.label && f.label !== name ? f.label : name);
            return { value: f.field, label: nice === name ? name : `${nice} (${name})` };
          }),
      })).filter((g) => g.options.length > 0),
    [fields, t, tOr],
  );
}

function AttributeEditor({ value, onChange }: { value: AttributeCond; onChange: (c: Condition) => void }) {
  const { t } = useI18n();
  const { fields, tags } = useContext(CatalogCtx);
  const options = useFieldOptions();
  const info = fields.find((f) => f.field === value.field);
  const type: FieldType | undefined = info?.type;
  const ops = type ? OPS_BY_TYPE[type] : [];
  const tag = value.field.startsWith("tags.") ? tags.find((x) => `tags.${x.name}` === value.field) : undefined;
  return (
    <Space wrap align="start">
      <Select
        showSearch
        aria-label={t("builder.field")}
        placeholder={t("builder.chooseField")}
        style={{ minWidth: 260 }}
        value={value.field || undefined}
        options={options}
        optionFilterProp="label"
        onChange={(f: string) => {
          const ft = fields.find((x) => x.field === f)?.type;
          const op = ft ? OPS_BY_TYPE[ft][0] : "";
          onChange({ kind: "attribute", field: f, op, value: ft === "boolean" ? true : undefined });
        }}
      />
      <Select
        aria-label={t("builder.operator")}
        placeholder={t("builder.chooseOp")}
        style={{ minWidth: 150 }}
        value={value.op || undefined}
        disabled={!type}
        options={ops.map((o) => ({ value: o, label: t(`ops.${type === "datetime" && o === "between" ? "between_dates" : o}`) }))}
        onChange={(op: string) => onChange({ ...value, op, value: keepValue(value.value, value.op, op, type) })}
      />
      {type && value.op && !NO_VALUE_OPS.has(value.op) && (
        <ValueInput type={type} op={value.op} value={value.value} onChange={(v) => onChange({ ...value, value: v })}
          suggestions={tag?.values?.length ? tag.values : undefined} />
      )}
    </Space>
  );
}

function keepValue(v: AttrValue, oldOp: string, newOp: string, type?: FieldType): AttrValue {
  const shape = (op: string) => (op === "between" ? "pair" : MULTI_OPS.has(op) ? "list" : NO_VALUE_OPS.has(op) ? "none" : op === "within_last_days" ? "days" : "one");
  if (shape(oldOp) === shape(newOp) && !(type === "datetime" && oldOp !== newOp && (newOp === "within_last_days" || oldOp === "within_last_days"))) return v;
  return type === "boolean" && shape(newOp) === "one" ? true : undefined;
}

function ValueInput({ type, op, value, onChange, suggestions }: { type: FieldType | "string" | "number" | "boolean"; op: string; value: AttrValue; onChange: (v: AttrValue) => void; suggestions?: string[] }) {
  const { t } = useI18n();
  const label = t("builder.value");
  if (type === "boolean") {
    return (
      <Select aria-label={label} style={{ width: 120 }} value={value === undefined ? undefined : String(value)}
        onChange={(v) => onChange(v === "true")}
        options={[{ value: "true", label: t("common.yes") }, { value: "false", label: t("common.no") }]} />
    );
  }
  if (MULTI_OPS.has(op)) {
    const list = Array.isArray(value) ? (value as Scalar[]) : [];
    return (
      <Select mode="tags" aria-label={label} style={{ minWidth: 240 }} placeholder={t("builder.typeValues")}
        value={list.map(String)} tokenSeparators={[",", "，"]}
        options={suggestions?.map((s) => ({ value: s, label: s }))}
        onChange={(vs: string[]) => onChange(type === "number" ? vs.map(Number).filter((n) => !Number.isNaN(n)) : vs)} />
    );
  }
  if (type === "number") {
    if (op === "between") {
      const pair = Array.isArray(value) ? (value as number[]) : [];
      return (
        <Space>
          <InputNumber aria-label={t("builder.low")} placeholder={t("builder.low")} value={pair[0]} onChange={(v) => onChange([v ?? (undefined as unknown as number), pair[1]])} />
          <span>–</span>
          <InputNumber aria-label={t("builder.high")} placeholder={t("builder.high")} value={pair[1]} onChange={(v) => onChange([pair[0], v ?? (undefined as unknown as number)])} />
        </Space>
      );
    }
    return <InputNumber aria-label={label} placeholder={label} style={{ width: 140 }} value={typeof value === "number" ? value : null} onChange={(v) => onChange(v ?? undefined)} />;
  }
  if (type === "datetime") return <DateValue op={op} value={value} onChange={onChange} />;
  if (suggestions && (op === "eq" || op === "ne")) {
    return (
      <Select showSearch aria-label={label} style={{ minWidth: 180 }} placeholder={label} value={typeof value === "string" ? value : undefined}
        options={suggestions.map((s) => ({ value: s, label: s }))} onChange={(v) => onChange(v)} />
    );
  }
  return <Input aria-label={label} placeholder={label} style={{ width: 200 }} value={typeof value === "string" ? value : ""} onChange={(e) => onChange(e.target.value)} />;
}

function DateValue({ op, value, onChange }: { op: string; value: AttrValue; onChange: (v: AttrValue) => void }) {
  const { t } = useI18n();
  if (op === "within_last_days") {
    return (
      <Space>
        <InputNumber aria-label={t("builder.days")} min={1} value={typeof value === "number" ? value : null} onChange={(v) => onChange(v ?? undefined)} />
        <span>{t("builder.days")}</span>
      </Space>
    );
  }
  if (op === "between") {
    const pair = Array.isArray(value) ? (value as string[]) : [];
    return (
      <DatePicker.RangePicker aria-label={t("builder.dateRange")}
        value={pair.length === 2 ? [dayjs(pair[0]), dayjs(pair[1])] : null}
        onChange={(r) => onChange(r && r[0] && r[1] ? [r[0].format("YYYY-MM-DD"), r[1].format("YYYY-MM-DD")] : undefined)} />
    );
  }
  const relative = value !== null && typeof value === "object" && !Array.isArray(value);
  const mode = relative || value === undefined ? "relative" : "absolute";
  return (
    <Space>
      <Select aria-label={t("builder.timeMode")} style={{ width: 130 }} value={mode}
        onChange={(m) => onChange(m === "relative" ? { days_ago: 30 } : dayjs().format("YYYY-MM-DD"))}
        options={[{ value: "relative", label: t("builder.relative") }, { value: "absolute", label: t("builder.absolute") }]} />
      {mode === "relative" ? (
        <Space>
          <InputNumber aria-label={t("builder.daysAgo")} min={0} value={relative ? (value as { days_ago: number }).days_ago : null}
            onChange={(v) => onChange(v === null ? undefined : { days_ago: v })} />
          <span>{t("builder.daysAgo")}</span>
        </Space>
      ) : (
        <DatePicker aria-label={t("builder.date")} value={typeof value === "string" ? dayjs(value) : null}
          onChange={(d) => onChange(d ? d.format("YYYY-MM-DD") : undefined)} />
      )}
    </Space>
  );
}

// -- event and sequence ----------------------------------------------------------------------------

function EventPicker({ value, onChange }: { value: string | null | undefined; onChange: (e: string) => void }) {
  const { t, num } = useI18n();
  const { events } = useContext(CatalogCtx);
  return (
    <Select showSearch aria-label={t("builder.event")} placeholder={t("builder.chooseEvent")} style={{ minWidth: 220 }}
      value={value || undefined} onChange={onChange} optionFilterProp="value"
      options={events.map((e) => ({ value: e.event, label: <span>{e.event} <Typography.Text type="secondary">· {num(e.count)}</Typography.Text></span> }))} />
  );
}

function FiltersEditor({ event, where, onChange }: { event: string | null | undefined; where: PropertyFilter[]; onChange: (w: PropertyFilter[]) => void }) {
  const { t } = useI18n();
  const { events } = useContext(CatalogCtx);
  const props = events.find((e) => e.event === event)?.properties ?? [];
  const set = (i: number, f: PropertyFilter) => onChange(where.map((x, j) => (j === i ? f : x)));
  return (
    <div className="gk-filters">
      {where.map((f, i) => {
        const type = f.type ?? props.find((p) => p.name === f.property)?.type ?? "string";
        return (
          <Space key={i} wrap style={{ marginBottom: 6 }}>
            <Typography.Text type="secondary">{t("builder.where")}</Typography.Text>
            <Select showSearch aria-label={t("builder.property")} placeholder={t("builder.property")} style={{ minWidth: 160 }}
              value={f.property || undefined}
              options={props.map((p) => ({ value: p.name, label: p.name }))}
              onChange={(p: string) => {
                const pt = props.find((x) => x.name === p)?.type ?? "string";
                set(i, { property: p, op: "eq", type: pt, value: pt === "boolean" ? true : undefined });
              }} />
            <Select aria-label={t("builder.operator")} style={{ minWidth: 130 }} value={f.op}
              options={OPS_BY_TYPE[type].map((o) => ({ value: o, label: t(`ops.${o}`) }))}
              onChange={(op: string) => set(i, { ...f, type, op, value: keepValue(f.value as AttrValue, f.op, op, type) as PropertyFilter["value"] })} />
            {!NO_VALUE_OPS.has(f.op) && (
              <ValueInput type={type} op={f.op} value={f.value as AttrValue} onChange={(v) => set(i, { ...f, type, value: v as PropertyFilter["value"] })} />
            )}
            <Button type="text" icon={<DeleteOutlined />} aria-label={t("builder.removeFilter")} onClick={() => onChange(where.filter((_, j) => j !== i))} />
          </Space>
        );
      })}
      <Button size="small" type="dashed" icon={<PlusOutlined />} disabled={!event} onClick={() => onChange([...where, { property: "", op: "eq" }])}>
        {t("builder.addFilter")}
      </Button>
    </div>
  );
}

function WindowEditor({ value, onChange }: { value: Window | null | undefined; onChange: (w: Window | null) => void }) {
  const { t } = useI18n();
  const mode = !value ? "all" : value.last_days !== undefined ? "last" : value.since ? "since" : "range";
  return (
    <Space wrap>
      <Typography.Text type="secondary">{t("builder.window")}</Typography.Text>
      <Select aria-label={t("builder.window")} style={{ width: 150 }} value={mode}
        onChange={(m) => onChange(m === "all" ? null : m === "last" ? { last_days: 30 } : m === "since" ? { since: "month", tz: TZ } : { start: dayjs().subtract(1, "month").format("YYYY-MM-DD"), end: dayjs().format("YYYY-MM-DD"), tz: TZ })}
        options={["all", "last", "since", "range"].map((m) => ({ value: m, label: t(`builder.windowMode.${m}`) }))} />
      {mode === "last" && (
        <Space>
          <InputNumber aria-label={t("builder.lastDays")} min={1} value={value?.last_days} onChange={(v) => onChange({ last_days: v ?? 1 })} />
          <span>{t("builder.days")}</span>
        </Space>
      )}
      {mode === "since" && (
        <Select aria-label={t("builder.since")} style={{ width: 120 }} value={value?.since}
          onChange={(s) => onChange({ since: s, tz: TZ })}
          options={["day", "week", "month", "year"].map((s) => ({ value: s, label: t(`builder.sinceOpt.${s}`) }))} />
      )}
      {mode === "range" && (
        <DatePicker.RangePicker aria-label={t("builder.dateRange")} value={value?.start && value?.end ? [dayjs(value.start), dayjs(value.end)] : null}
          onChange={(r) => r && r[0] && r[1] && onChange({ start: r[0].format("YYYY-MM-DD"), end: r[1].add(1, "day").format("YYYY-MM-DD"), tz: TZ })} />
      )}
    </Space>
  );
}

function Line({ children }: { children: ReactNode }) {
  return <div style={{ marginTop: 8 }}>{children}</div>;
}

function EventEditor({ value, onChange }: { value: EventCond; onChange: (c: Condition) => void }) {
  const { t } = useI18n();
  const did = value.did !== false;
  const count = value.count ?? { op: "at_least" as const, n: 1 };
  return (
    <div>
      <Space wrap>
        <Select aria-label={t("builder.didOrNot")} style={{ width: 120 }} value={did ? "did" : "not"}
          onChange={(v) => onChange({ ...value, did: v === "did", count: v === "did" ? value.count : null })}
          options={[{ value: "did", label: t("builder.did") }, { value: "not", label: t("builder.didNot") }]} />
        <EventPicker value={value.event} onChange={(e) => onChange({ ...value, event: e, where: [] })} />
        {did && (
          <>
            <Select aria-label={t("builder.countOp")} style={{ width: 110 }} value={count.op}
              onChange={(op) => onChange({ ...value, count: { ...count, op } })}
              options={["at_least", "at_most", "exactly"].map((o) => ({ value: o, label: t(`builder.count.${o}`) }))} />
            <InputNumber aria-label={t("builder.times")} min={0} value={count.n} style={{ width: 80 }} onChange={(n) => onChange({ ...value, count: { ...count, n: n ?? 0 } })} />
            <span>{t("builder.times")}</span>
          </>
        )}
      </Space>
      <Line><WindowEditor value={value.window} onChange={(w) => onChange({ ...value, window: w })} /></Line>
      <Line><FiltersEditor event={value.event} where={value.where ?? []} onChange={(w) => onChange({ ...value, where: w })} /></Line>
    </div>
  );
}

function SequenceEditor({ value, onChange }: { value: SequenceCond; onChange: (c: Condition) => void }) {
  const { t } = useI18n();
  const setStep = (i: number, s: SequenceCond["steps"][number]) => onChange({ ...value, steps: value.steps.map((x, j) => (j === i ? s : x)) });
  return (
    <div>
      <Space wrap>
        <Select aria-label={t("builder.didOrNot")} style={{ width: 120 }} value={value.did === false ? "not" : "did"}
          onChange={(v) => onChange({ ...value, did: v === "did" })}
          options={[{ value: "did", label: t("builder.did") }, { value: "not", label: t("builder.didNot") }]} />
        <span>{t("builder.sequenceWithin")}</span>
        <InputNumber aria-label={t("builder.withinDays")} min={1} value={value.within_days} style={{ width: 80 }} onChange={(n) => onChange({ ...value, within_days: n ?? 1 })} />
        <span>{t("builder.days")}</span>
      </Space>
      {value.steps.map((s, i) => (
        <div key={i} className="gk-step">
          <Space wrap>
            <AntTag color="purple">{t("builder.step", { n: i + 1 })}</AntTag>
            <EventPicker value={s.event} onChange={(e) => setStep(i, { ...s, event: e, where: [] })} />
            {value.steps.length > 2 && (
              <Button type="text" icon={<DeleteOutlined />} aria-label={t("builder.removeStep")} onClick={() => onChange({ ...value, steps: value.steps.filter((_, j) => j !== i) })} />
            )}
          </Space>
          <Line><FiltersEditor event={s.event} where={s.where ?? []} onChange={(w) => setStep(i, { ...s, where: w })} /></Line>
        </div>
      ))}
      {value.steps.length < 3 && (
        <Button size="small" type="dashed" icon={<PlusOutlined />} onClick={() => onChange({ ...value, steps: [...value.steps, { event: null }] })}>
          {t("builder.addStep")}
        </Button>
      )}
      <Line><WindowEditor value={value.window} onChange={(w) => onChange({ ...value, window: w })} /></Line>
    </div>
  );
}
