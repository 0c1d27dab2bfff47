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

// -- insight (src/goldkey/insight/*_api.py and /api/v1/console/rfm-grid) ----------------------------

export interface ModelMeta {
  name: string;
  kind: string;
  version: number;
  created_at: string;
  definition: Record<string, unknown>;
  metrics: Record<string, unknown>;
}

export interface RFMGrid {
  version: number | null;
  scored: number;
  cells: { r: number; f: number; group: string; profiles: number }[];
  groups: { group: string; en: string; zh: string; description: string; profiles: number }[];
}

export interface CLVSummary {
  model: string;
  version: number;
  as_of: string | null;
  created_at: string;
  period: string | null;
  parameters: Record<string, Record<string, number>>;
  metrics: Record<string, unknown>;
  distribution: {
    histogram: { from: number; to: number; profiles: number }[];
    deciles: { decile: number; profiles: number; min: number; max: number; mean: number; sum: number; share: number }[];
  };
}

export interface LiftRow {
  decile: number;
  customers: number;
  positives: number;
  rate: number;
  lift: number;
  cumulative_customers: number;
  cumulative_positives: number;
  cumulative_gain_pct: number;
  cumulative_lift: number;
  min_score: number;
  max_score: number;
}

export interface ChurnVersion {
  version: number;
  created_at: string;
  as_of: string | null;
  cutoff: string | null;
  auc: number;
  pr_auc: number;
  brier: number;
  top_decile_lift: number;
  base_rate: number;
  labelled: number;
  test: number;
  lift_table: LiftRow[];
  feature_importance: { feature: string; gain_share: number }[];
  [k: string]: unknown;
}

export interface Evaluation {
  name: string;
  kind: string;
  versions: ChurnVersion[];
}

export interface LifecycleSummary {
  model: string;
  version: number;
  as_of: string | null;
  created_at: string;
  order: string[];
  stages: { stage: string; en: string; zh: string; description: string; profiles: number }[];
  transitions: Record<string, Record<string, number>>;
  customers: number;
  staged: number;
  changed: number;
}

export interface Cluster {
  cluster: string;
  size: number;
  share: number;
  description_en: string;
  description_zh: string;
  means: Record<string, number>;
  top_categories: Record<string, number>;
}

export interface Clusters {
  model: string;
  version: number;
  as_of: string | null;
  created_at: string;
  k: number;
  features: string[];
  metrics: { silhouette: Record<string, number>; silhouette_best: number; customers: number };
  clusters: Cluster[];
}

export interface AssociationRule {
  antecedent: string[];
  consequent: string[];
  support: number;
  confidence: number;
  lift: number;
  leverage: number;
  conviction: number | null;
  count: number;
}

export interface RuleList {
  version: number;
  scope: string;
  level: string;
  transactions: number;
  /** rules passing the filters; ``rules`` holds the first ``limit`` of them by lift */
  matched: number;
  rules: AssociationRule[];
}

export interface FunnelReport {
  start: string;
  end: string;
  window_days: number;
  steps: { step: number; event: string; profiles: number; conversion_pct: number; overall_pct: number; median_seconds_from_previous: number | null }[];
}

export interface CohortReport {
  cohort_by: string;
  activity: string;
  period: string;
  offsets: number[];
  /** counts / pct are null for periods that had not begun by the report's end; partial_last marks
   * a cohort whose last shown period is still running */
  cohorts: { cohort: string; size: number; counts: (number | null)[]; pct: (number | null)[]; periods_elapsed: number;
    partial_last: boolean }[];
}

export interface ChannelReport {
  touch: string;
  clv_available: boolean;
  channels: {
    source: string;
    medium: string;
    /** touched profiles that had not bought before the touch (the channel's prospects) */
    customers: number;
    converted: number;
    conversion_pct: number | null;
    orders: number;
    revenue: number;
    revenue_per_customer: number | null;
    /** touched profiles that had already bought before: not acquired by the channel */
    existing_customers: number;
    existing_revenue: number;
    avg_clv: number | null;
    cost_key: string | null;
    cost: number | null;
    cac: number | null;
    roas: number | null;
  }[];
  spend: { key: string; channels: number; customers: number; converted: number; revenue: number;
    cost: number; cac: number | null; roas: number | null }[];
}

// -- activation (src/goldkey/api/activate.py, campaigns.py, journeys.py) ---------------------------

export interface Channel {
  channel_id: string;
  name: string;
  kind: string;
  status: string;
}

export interface TemplateText {
  subject?: string | null;
  text: string;
}

export interface MessageTemplate {
  variants: Partial<Record<"zh" | "en", TemplateText>>;
  default_language?: "zh" | "en";
  vars?: string[];
}

export interface CampaignProgress {
  run: number;
  targeted: number;
  members: Record<string, number>;
  messages: Record<string, number>;
  unmatched: number;
  run_status: string | null;
  started_at: string | null;
  finished_at: string | null;
}

export interface CampaignSummary {
  campaign_id: string;
  name: string;
  status: string;
  run: number;
  next_run_at: string | null;
  created_at: string;
}

export interface Campaign extends CampaignSummary {
  error: string | null;
  definition: {
    audience: { segment_id?: string | null };
    channel_id: string;
    variants: { key: string; weight: number; template: MessageTemplate }[];
    holdout_pct: number;
    schedule: { kind: string; at?: string | null };
    throttle_per_minute: number | null;
    conversion: { event?: string | null; order: boolean; attribution_days: number };
  };
  updated_at: string;
  progress: CampaignProgress;
}

export interface ArmReport {
  arm: string;
  targeted: number;
  itt: { converted: number; conversion_rate: number | null; revenue: number; revenue_per_customer: number | null };
  sent?: number;
  delivered?: number;
  opened?: number;
  clicked?: number;
  converted?: number;
  conversion_rate?: number | null;
  suppressed?: number;
  revenue?: number;
  cost?: number;
  roi?: number | null;
}

export interface UpliftGroup {
  n: number;
  converted?: number;
  conversion_rate?: number | null;
  uplift?: number;
  uplift_ci95?: [number, number];
  incremental_revenue_per_customer?: number;
  incremental_revenue_per_customer_ci95?: [number, number] | null;
}

export interface CampaignReport {
  campaign_id: string;
  run: number;
  status: string;
  attribution_days: number;
  window_complete: boolean;
  window_ends_at: string | null;
  arms: ArmReport[];
  uplift: { available: boolean; reason?: string; holdout?: UpliftGroup; [arm: string]: unknown };
  method: Record<string, string>;
}

export interface JourneyNode {
  id: string;
  type: string;
  config: Record<string, unknown>;
  label?: string;
  position?: { x: number; y: number } | null;
}

export interface JourneyEdge {
  id?: string | null;
  source: string;
  target: string;
  label?: string | null;
}

export interface JourneySummary {
  journey_id: string;
  name: string;
  status: string;
  version: number;
  created_at: string;
  updated_at: string;
}

export interface Journey extends JourneySummary {
  definition: { name: string; description?: string; graph: { nodes: JourneyNode[]; edges: JourneyEdge[] }; re_entry?: unknown };
  versions: { version: number; published_at: string | null; published_by: string }[];
}

export interface JourneyStats {
  journey_id: string;
  version: number;
  status: string;
  totals: Record<string, number>;
  nodes: { node_id: string; type: string; current: number; visits: number; outcomes: Record<string, number> }[];
}

/** GET /api/v1/console/channel-kinds: a registered channel class and its form. */
export interface JsonSchemaProp {
  type?: string;
  enum?: string[];
  anyOf?: { type?: string; pattern?: string }[];
  default?: unknown;
  description?: string;
  title?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
}

export interface ChannelKind {
  kind: string;
  provider: string;
  consent_channel: string;
  address_type: string;
  secret_fields: string[];
  optional_secret_fields: string[];
  uses_provider_template: boolean;
  config_schema: { properties?: Record<string, JsonSchemaProp>; required?: string[] };
}

export interface ChannelPublic {
  channel_id: string;
  name: string;
  kind: string;
  provider: string;
  config: Record<string, unknown>;
  secrets_set: string[];
  status: string;
  created_at: string;
  updated_at: string;
}

export interface ApiKey {
  key_id: string;
  kind: "write" | "admin";
  prefix: string;
  label: string;
  created_at: string;
  revoked_at: string | null;
}

export interface SendPolicy {
  timezone: string;
  caps: Record<string, { day: number | null; week: number | null }>;
  quiet_hours: { start: string; end: string } | null;
  exempt_purposes: string[];
  tracking_base_url: string;
}

/** GET /api/v1/messages: one row of the message log (address masked). */
export interface MessageRow {
  message_id: string;
  profile_id: string;
  channel_id: string;
  channel: string;
  purpose: string;
  message_key: string;
  ref: string | null;
  template_id: string | null;
  status: string;
  reason: string | null;
  attempts: number;
  cost: number | null;
  address: string | null;
  created_at: string | null;
  sent_at: string | null;
  delivered_at: string | null;
  opened_at: string | null;
  clicked_at: string | null;
}

/** Users and roles (src/goldkey/api/auth.py). */
export type UserRole = "admin" | "marketer" | "analyst" | "viewer";

export interface UserGrant {
  workspace_id: string;
  name: string;
  role: UserRole;
}

export interface LoginResult {
  token: string;
  expires_at: string;
  user: { user_id: string; email: string; name: string; created_at: string | null; disabled_at: string | null };
  grants: UserGrant[];
}

export interface WorkspaceUser {
  user_id: string;
  email: string;
  name: string;
  role: UserRole;
  granted_at: string | null;
  granted_by: string;
  disabled_at: string | null;
}

export interface UserInvited extends WorkspaceUser {
  created: boolean;
  initial_password: string | null;
}
