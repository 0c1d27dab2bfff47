/** Shapes the OpenAPI schema declares only as "object" (segments, tags, fields, estimates) or does
 * not list yet (the console's own aggregates in src/goldkey/api/console.py). */

export interface Overview {
  as_of: string;
  window_days: number;
  customers: number;
  customers_existing: number;
  customers_new: number;
  active: number;
  active_new: number;
  active_returning: number;
  revenue: number;
  orders: number;
  buyers: number;
  revenue_all_time: number;
  orders_all_time: number;
  currency: string | null;
  currencies: number;
  last_activity_at: string | null;
  daily_active: { day: string; active: number }[];
  monthly_revenue: { month: string; revenue: number; orders: number; customers: number }[];
}

export interface EventName {
  event: string;
  count: number;
  last_at: string | null;
  properties: { name: string; type: "string" | "number" | "boolean" }[];
}

export type FieldType = "string" | "number" | "boolean" | "datetime" | "list";
export interface FieldInfo {
  field: string;
  type: FieldType;
  source: string;
  label: string;
  description: string;
}

export interface Segment {
  segment_id: string;
  name: string;
  description: string;
  version: number;
  realtime: boolean;
  size: number | null;
  computed_at: string | null;
  created_at: string | null;
  updated_at: string | null;
  rule?: unknown;
}

export interface Snapshot {
  version: number;
  size: number;
  entered: number;
  exited: number;
  as_of: string;
  took_ms: number;
  created_at: string;
}

export interface Members {
  total: number;
  limit: number;
  offset: number;
  items: { profile_id: string; entered_at: string | null; name: string | null; email: string | null; phone: string | null }[];
}

export interface Explanation {
  profile_id?: string;
  path?: string;
  kind?: string;
  matched?: boolean;
  error?: string;
  conditions?: Explanation[];
  condition?: Explanation;
  [k: string]: unknown;
}

export interface Estimate {
  size: number;
  total_profiles: number | null;
  as_of: string;
  took_ms: number;
  examples: string[];
  explanations: Explanation[];
}

export interface Tag {
  name: string;
  kind: "rule" | "manual" | "model";
  value_type: "enum" | "boolean" | "number";
  category: string;
  owner: string;
  description: string;
  values: string[];
  rules: { value: unknown; rule: unknown }[];
  version: number;
  status: string;
  computed_at: string | null;
  created_at: string | null;
  updated_at: string | null;
}

export interface Coverage {
  tag: string;
  total_profiles: number;
  tagged: number;
  coverage: number;
  values: { value: string | number | boolean; profiles: number }[];
}
