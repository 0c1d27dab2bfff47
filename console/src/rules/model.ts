/** The rule language (docs/rules.md) as TypeScript types, with the helpers the visual builder
 * needs: operators by field type, empty conditions, and a completeness check run before a draft
 * is sent for a live estimate. */
import type { FieldType } from "../api/types";

export type Scalar = string | number | boolean;
export type RelTime = { days_ago: number };
export type AttrValue = Scalar | RelTime | Scalar[] | null | undefined;

export interface Window {
  last_days?: number;
  start?: string;
  end?: string;
  since?: "day" | "week" | "month" | "year";
  tz?: string;
}
export interface PropertyFilter {
  property: string;
  op: string;
  value?: Scalar | Scalar[] | null;
  type?: "string" | "number" | "boolean";
}
export interface AttributeCond {
  kind: "attribute";
  field: string;
  op: string;
  value?: AttrValue;
}
export interface EventCond {
  kind: "event";
  event?: string | null;
  type?: string;
  did?: boolean;
  count?: { op: "at_least" | "at_most" | "exactly"; n: number } | null;
  where?: PropertyFilter[];
  window?: Window | null;
}
export interface SequenceStep {
  event?: string | null;
  type?: string;
  where?: PropertyFilter[];
}
export interface SequenceCond {
  kind: "sequence";
  steps: SequenceStep[];
  within_days: number;
  did?: boolean;
  window?: Window | null;
}
export interface GroupCond {
  kind: "and" | "or";
  conditions: Condition[];
}
export interface NotCond {
  kind: "not";
  condition: Condition;
}
export type Condition = AttributeCond | EventCond | SequenceCond | GroupCond | NotCond;

export const OPS_BY_TYPE: Record<FieldType, string[]> = {
  string: ["eq", "ne", "in", "not_in", "contains", "not_contains", "starts_with", "is_set", "is_not_set"],
  number: ["eq", "ne", "lt", "lte", "gt", "gte", "between", "in", "not_in", "is_set", "is_not_set"],
  boolean: ["eq", "ne", "is_set", "is_not_set"],
  datetime: ["before", "after", "between", "within_last_days", "is_set", "is_not_set"],
  list: ["contains", "not_contains", "is_set", "is_not_set"],
};
export const NO_VALUE_OPS = new Set(["is_set", "is_not_set"]);
export const MULTI_OPS = new Set(["in", "not_in"]);

export const emptyAttribute = (): AttributeCond => ({ kind: "attribute", field: "", op: "" });
export const emptyEvent = (): EventCond => ({ kind: "event", event: null, did: true, window: { last_days: 30 } });
export const emptySequence = (): SequenceCond => ({
  kind: "sequence",
  steps: [{ event: null }, { event: null }],
  within_days: 7,
  window: { last_days: 30 },
});
export const emptyGroup = (kind: "and" | "or" = "and"): GroupCond => ({ kind, conditions: [] });

/** The root the builder edits is always a group; a saved rule of another kind is wrapped. */
export function asRootGroup(rule: unknown): GroupCond {
  const r = rule as Condition | undefined;
  if (r && (r.kind === "and" || r.kind === "or")) return r;
  return { kind: "and", conditions: r ? [r] : [] };
}

function valueSet(v: unknown): boolean {
  if (v === undefined || v === null || v === "") return false;
  if (Array.isArray(v)) return v.length > 0 && v.every((x) => x !== null && x !== undefined && x !== "");
  return true;
}

function filterComplete(f: PropertyFilter): boolean {
  if (!f.property || !f.op) return false;
  if (NO_VALUE_OPS.has(f.op)) return true;
  if (f.op === "between") return Array.isArray(f.value) && f.value.length === 2 && valueSet(f.value);
  return valueSet(f.value);
}

function windowComplete(w: Window | null | undefined): boolean {
  if (!w) return true;
  if (w.last_days !== undefined) return w.last_days > 0;
  if (w.since) return true;
  return Boolean(w.start || w.end);
}

/** True when every clause has what the server needs (so a live estimate makes sense). */
export function isComplete(c: Condition): boolean {
  switch (c.kind) {
    case "and":
    case "or":
      return c.conditions.length > 0 && c.conditions.every(isComplete);
    case "not":
      return isComplete(c.condition);
    case "attribute":
      if (!c.field || !c.op) return false;
      if (NO_VALUE_OPS.has(c.op)) return true;
      if (c.op === "between") return Array.isArray(c.value) && c.value.length === 2 && valueSet(c.value);
      return valueSet(c.value);
    case "event":
      return (c.type && c.type !== "track" ? true : Boolean(c.event)) && (c.where ?? []).every(filterComplete) &&
        windowComplete(c.window) && (!c.count || c.count.n >= 0);
    case "sequence":
      return c.steps.length >= 2 && c.steps.every((s) => Boolean(s.event) && (s.where ?? []).every(filterComplete)) &&
        c.within_days > 0 && windowComplete(c.window);
  }
}

/** Drop empty optional parts before sending (an empty where list, a null count). */
export function clean(c: Condition): Condition {
  switch (c.kind) {
    case "and":
    case "or":
      return { kind: c.kind, conditions: c.conditions.map(clean) };
    case "not":
      return { kind: "not", condition: clean(c.condition) };
    case "attribute":
      return NO_VALUE_OPS.has(c.op) ? { kind: "attribute", field: c.field, op: c.op } : c;
    case "event": {
      const out: EventCond = { kind: "event", event: c.event ?? null };
      if (c.type && c.type !== "track") out.type = c.type;
      if (c.did === false) out.did = false;
      else if (c.count) out.count = c.count;
      if (c.where?.length) out.where = c.where;
      if (c.window) out.window = c.window;
      return out;
    }
    case "sequence": {
      const out: SequenceCond = {
        kind: "sequence",
        within_days: c.within_days,
        steps: c.steps.map((s) => ({ event: s.event, ...(s.where?.length ? { where: s.where } : {}) })),
      };
      if (c.did === false) out.did = false;
      if (c.window) out.window = c.window;
      return out;
    }
  }
}
