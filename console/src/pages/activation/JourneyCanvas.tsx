/** The journey canvas (React Flow): drag step types from the palette onto the canvas (HTML5 drag and
 * drop; Enter on a palette item adds it too), connect a step's outputs to the next steps, edit the
 * selected step in the side panel (conditions with the segment builder's rule editor), then save,
 * validate and publish through /api/v1/journeys. The API's errors are shown on the steps they name;
 * once published, each step shows how many customers are there now and how many passed. */
import "@xyflow/react/dist/style.css";
import {
  Background, Controls, Handle, MiniMap, Position, ReactFlow, ReactFlowProvider, addEdge, useEdgesState, useNodesState, useReactFlow,
  type Connection, type Edge, type Node, type NodeProps,
} from "@xyflow/react";
import { Alert, App, Button, Card, Empty, Form, Input, InputNumber, Radio, Select, Space, Switch, Tag, Tooltip, Typography } from "antd";
import {
  ApiOutlined, BranchesOutlined, CheckCircleOutlined, ClockCircleOutlined, DeleteOutlined, FlagOutlined, ForkOutlined,
  LoginOutlined, LogoutOutlined, SendOutlined, TagOutlined,
} from "@ant-design/icons";
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type DragEvent, type ReactNode } from "react";
import { Link, useParams } from "react-router-dom";
import { api, ApiError } from "../../api/client";
import type { Channel, Journey, JourneyEdge, JourneyNode, JourneyStats, Segment } from "../../api/types";
import { PageHead } from "../../components/PageHead";
import { Async } from "../../components/States";
import { useI18n } from "../../i18n";
import { asRootGroup, clean, isComplete, type GroupCond } from "../../rules/model";
import { RuleEditor, type Catalog } from "../../rules/RuleEditor";
import { useApi } from "../../useApi";
import { useCatalog } from "../SegmentBuilder";
import { StatusTag } from "./Campaigns";

export const NODE_TYPES = ["entry", "wait", "condition", "split", "send", "update_tag", "webhook", "goal", "exit"] as const;
type StepType = (typeof NODE_TYPES)[number];
const ICONS: Record<StepType, ReactNode> = {
  entry: <LoginOutlined />, wait: <ClockCircleOutlined />, condition: <BranchesOutlined />, split: <ForkOutlined />, send: <SendOutlined />,
  update_tag: <TagOutlined />, webhook: <ApiOutlined />, goal: <FlagOutlined />, exit: <LogoutOutlined />,
};
const COLORS: Record<StepType, string> = {
  entry: "#3f9b6b", wait: "#8a8f98", condition: "#c8961e", split: "#7a5bb5", send: "#1f5fa8", update_tag: "#2a9bb0", webhook: "#b04a7a", goal: "#d4613e", exit: "#595959",
};
const MIME = "application/x-goldkey-step";

interface StepData extends Record<string, unknown> {
  type: StepType;
  config: Record<string, unknown>;
  label: string;
  error?: string;
  stats?: JourneyStats["nodes"][number];
}
type StepNode = Node<StepData, "step">;

/** Default config of a new step: valid where a default makes sense, to be completed in the panel. */
function defaultConfig(type: StepType): Record<string, unknown> {
  switch (type) {
    case "entry": return { kind: "segment", segment_id: "", include_existing: true };
    case "wait": return { duration: { days: 1 } };
    case "condition": return { rule: { kind: "and", conditions: [] } };
    case "split": return { branches: [{ key: "a", weight: 1 }, { key: "b", weight: 1 }] };
    case "send": return { channel_id: "", template: { variants: { zh: { text: "" } }, default_language: "zh" }, purpose: "marketing" };
    case "update_tag": return { tag: "", value: true };
    case "webhook": return { url: "" };
    case "goal": return { event: { kind: "event", event: "", did: true } };
    default: return {};
  }
}

/** The labelled outputs a step needs (null: one unlabelled output; []: none). */
function outputs(d: StepData): string[] | null {
  if (d.type === "goal" || d.type === "exit") return [];
  if (d.type === "condition") return ["yes", "no"];
  if (d.type === "split") return ((d.config.branches as { key: string }[] | undefined) ?? []).map((b) => b.key).filter(Boolean);
  if (d.type === "wait" && d.config.until) return ["event", "timeout"];
  return null;
}

// -- the step drawn on the canvas -----------------------------------------------------------------

const LabelCtx = createContext<(type: StepType) => string>((x) => x);

function StepView({ id, data, selected }: NodeProps<StepNode>) {
  const { t, num } = useI18n();
  const typeName = useContext(LabelCtx);
  const outs = outputs(data);
  const s = data.stats;
  return (
    <div className={`gk-step-node${selected ? " gk-selected" : ""}${data.error ? " gk-step-error" : ""}`} style={{ borderTopColor: COLORS[data.type] }}
      data-testid={`node-${id}`} data-type={data.type}>
      {data.type !== "entry" && <Handle type="target" position={Position.Top} id="in" />}
      <div className="gk-step-head">
        <span style={{ color: COLORS[data.type] }}>{ICONS[data.type]}</span>
        <Typography.Text strong>{data.label || typeName(data.type)}</Typography.Text>
      </div>
      <div className="gk-step-sub"><span className="gk-mono">{id}</span> · {typeName(data.type)}</div>
      {s && (
        <div className="gk-step-stats" data-testid={`stats-${id}`} data-current={s.current} data-visits={s.visits}>
          <Tag color="gold">{t("journeys.now", { n: num(s.current) })}</Tag>
          <Tag>{t("journeys.visits", { n: num(s.visits) })}</Tag>
        </div>
      )}
      {data.error && <Tooltip title={data.error}><div className="gk-step-err" role="alert">{data.error}</div></Tooltip>}
      {outs === null && <Handle type="source" position={Position.Bottom} id="out" />}
      {outs && outs.map((k, i) => (
        <Handle key={k} type="source" position={Position.Bottom} id={k} style={{ left: `${((i + 1) * 100) / (outs.length + 1)}%` }}>
          <span className="gk-handle-label">{t(`journeys.out.${k}`) === `journeys.out.${k}` ? k : t(`journeys.out.${k}`)}</span>
        </Handle>
      ))}
    </div>
  );
}

const nodeTypes = { step: StepView };

// -- conversion between the API's graph and React Flow's ------------------------------------------

function toFlow(j: Journey | null): { nodes: StepNode[]; edges: Edge[] } {
  if (!j) return { nodes: [], edges: [] };
  const nodes = j.definition.graph.nodes.map((n, i): StepNode => ({
    id: n.id, type: "step", position: n.position ?? { x: 80 + (i % 4) * 240, y: 40 + Math.floor(i / 4) * 160 },
    data: { type: n.type as StepType, config: n.config ?? {}, label: n.label ?? "" },
  }));
  const edges = j.definition.graph.edges.map((e, i): Edge => ({
    id: e.id ?? `e${i}-${e.source}-${e.target}`, source: e.source, target: e.target, sourceHandle: e.label ?? "out", targetHandle: "in",
    label: e.label ?? undefined,
  }));
  return { nodes, edges };
}

function toGraph(nodes: StepNode[], edges: Edge[]): { nodes: JourneyNode[]; edges: JourneyEdge[] } {
  return {
    nodes: nodes.map((n) => {
      let config = n.data.config;
      if (n.data.type === "condition") {
        const rule = asRootGroup(config.rule);
        config = { ...config, rule: isComplete(rule) ? clean(rule) : rule };
      }
      return { id: n.id, type: n.data.type, config, label: n.data.label, position: { x: Math.round(n.position.x), y: Math.round(n.position.y) } };
    }),
    edges: edges.map((e) => ({ id: e.id.slice(0, 100), source: e.source, target: e.target, label: e.sourceHandle && e.sourceHandle !== "out" ? e.sourceHandle : null })),
  };
}

/** The node ids an API error names: the node of `graph.nodes[i]`, quoted ids, and the lists of
 * "unreachable …: a, b" and "cycle … through nodes a, b: …". */
export function nodesInError(message: string, field: string | null, sent: JourneyNode[]): string[] {
  const ids = new Set(sent.map((n) => n.id));
  const found = new Set<string>();
  const m = field ? /graph\.nodes\[(\d+)\]/.exec(field) : null;
  if (m && sent[Number(m[1])]) found.add(sent[Number(m[1])].id);
  for (const q of message.matchAll(/'([\w-]+)'/g)) if (ids.has(q[1])) found.add(q[1]);
  const list = /unreachable from the entry node '[\w-]+': (.*)$/.exec(message) ?? /through nodes ([\w\-, ]+):/.exec(message);
  if (list) {
    if (message.startsWith("unreachable")) found.clear();
    for (const x of list[1].split(/,\s*/)) if (ids.has(x.trim())) found.add(x.trim());
  }
  return [...found];
}

// -- the page ---------------------------------------------------------------------------------------

export function JourneyCanvasPage() {
  const { journeyId } = useParams();
  const j = useApi<Journey | null>((signal) => (journeyId ? api.raw<Journey>("get", `/api/v1/journeys/${encodeURIComponent(journeyId)}`, undefined, { signal }) : Promise.resolve(null)), [journeyId]);
  const catalog = useCatalog();
  return (
    <Async value={j} rows={10}>
      {(journey) => (
        <Async value={catalog} rows={4}>
          {(cat) => <ReactFlowProvider><Editor key={journey?.journey_id ?? "new"} journey={journey} catalog={cat} /></ReactFlowProvider>}
        </Async>
      )}
    </Async>
  );
}

function Editor({ journey, catalog }: { journey: Journey | null; catalog: Catalog }) {
  const { t } = useI18n();
  const { message } = App.useApp();
  const initial = useMemo(() => toFlow(journey), [journey]);
  const [nodes, setNodes, onNodesChange] = useNodesState<StepNode>(initial.nodes);
  const [edges, setEdges, onEdgesChange] = useEdgesState<Edge>(initial.edges);
  const [name, setName] = useState(journey?.name ?? "");
  const [current, setCurrent] = useState<Journey | null>(journey);
  const [selected, setSelected] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [problem, setProblem] = useState<{ message: string; field: string | null } | null>(null);
  const [checked, setChecked] = useState<string | null>(null);
  const [totals, setTotals] = useState<Record<string, number> | null>(null);
  const wrapper = useRef<HTMLDivElement>(null);
  const flow = useReactFlow<StepNode, Edge>();
  const counter = useRef(0);
  const typeName = useCallback((x: StepType) => t(`journeys.types.${x}`), [t]);

  const add = useCallback((type: StepType, position: { x: number; y: number }) => {
    const used = new Set(flow.getNodes().map((n) => n.id));
    let id = "";
    do { counter.current += 1; id = `${type}_${counter.current}`; } while (used.has(id));
    setNodes((ns) => [...ns.map((n) => ({ ...n, selected: false })), { id, type: "step", position, selected: true, data: { type, config: defaultConfig(type), label: "" } }]);
    setSelected(id);
    setChecked(null);
  }, [flow, setNodes]);

  const onDrop = useCallback((e: DragEvent) => {
    e.preventDefault();
    const type = e.dataTransfer.getData(MIME) as StepType;
    if (!NODE_TYPES.includes(type)) return;
    const p = flow.screenToFlowPosition({ x: e.clientX, y: e.clientY });
    add(type, { x: p.x - 90, y: p.y - 30 });
  }, [flow, add]);

  const onConnect = useCallback((c: Connection) => {
    setChecked(null);
    setEdges((es) => addEdge({ ...c, id: `e-${c.source}-${c.sourceHandle ?? "out"}-${c.target}`, label: c.sourceHandle && c.sourceHandle !== "out" ? t(`journeys.out.${c.sourceHandle}`) === `journeys.out.${c.sourceHandle}` ? c.sourceHandle : t(`journeys.out.${c.sourceHandle}`) : undefined },
      // one edge per output: a new connection from the same output replaces the old one
      es.filter((e) => !(e.source === c.source && (e.sourceHandle ?? "out") === (c.sourceHandle ?? "out")))));
  }, [setEdges, t]);

  const update = useCallback((id: string, patch: Partial<StepData>) => {
    setChecked(null);
    setNodes((ns) => ns.map((n) => (n.id === id ? { ...n, data: { ...n.data, ...patch, error: undefined } } : n)));
  }, [setNodes]);

  const markErrors = (e: unknown, sent: JourneyNode[]) => {
    const msg = (e as Error).message;
    const field = e instanceof ApiError ? e.field : null;
    setProblem({ message: msg, field });
    const bad = new Set(nodesInError(msg, field, sent));
    setNodes((ns) => ns.map((n) => ({ ...n, data: { ...n.data, error: bad.has(n.id) ? msg : undefined } })));
  };

  /** Save the draft (the API checks it); returns the saved journey or null when refused. */
  const save = async (): Promise<Journey | null> => {
    const graph = toGraph(flow.getNodes(), flow.getEdges());
    setProblem(null);
    setChecked(null);
    setNodes((ns) => ns.map((n) => (n.data.error ? { ...n, data: { ...n.data, error: undefined } } : n)));
    if (!name.trim()) {
      setProblem({ message: t("journeys.nameRequired"), field: "name" });
      return null;
    }
    const body = { name: name.trim(), description: current?.definition.description ?? "", graph, ...(current?.definition.re_entry ? { re_entry: current.definition.re_entry } : {}) };
    try {
      const saved = current
        ? await api.raw<Journey>("put", `/api/v1/journeys/${encodeURIComponent(current.journey_id)}`, body)
        : await api.raw<Journey>("post", "/api/v1/journeys", body);
      setCurrent(saved);
      // the new journey's address, without re-mounting the canvas (the router does not see replaceState)
      if (!current) window.history.replaceState(window.history.state, "", `/journeys/${saved.journey_id}`);
      return saved;
    } catch (e) {
      markErrors(e, graph.nodes);
      return null;
    }
  };
  const run = async (what: "save" | "validate" | "publish") => {
    setBusy(what);
    try {
      const saved = await save();
      if (!saved) return;
      const path = `/api/v1/journeys/${encodeURIComponent(saved.journey_id)}`;
      if (what === "save") message.success(t("journeys.saved"));
      if (what === "validate") {
        try {
          const v = await api.raw<{ valid: boolean; nodes: number; edges: number }>("post", `${path}/validate`);
          setChecked(t("journeys.valid", { nodes: v.nodes, edges: v.edges }));
        } catch (e) {
          markErrors(e, toGraph(flow.getNodes(), flow.getEdges()).nodes);
        }
      }
      if (what === "publish") {
        try {
          const p = await api.raw<Journey>("post", `${path}/publish`);
          setCurrent(p);
          message.success(t("journeys.published", { v: p.version }));
        } catch (e) {
          markErrors(e, toGraph(flow.getNodes(), flow.getEdges()).nodes);
        }
      }
    } finally {
      setBusy(null);
    }
  };
  const setStatus = async (verb: "pause" | "resume") => {
    if (!current) return;
    setBusy(verb);
    try {
      setCurrent(await api.raw<Journey>("post", `/api/v1/journeys/${encodeURIComponent(current.journey_id)}/${verb}`));
    } catch (e) {
      message.error((e as Error).message);
    } finally {
      setBusy(null);
    }
  };

  // per-step counts once published, refreshed every 5 s
  const live = current && current.version > 0;
  useEffect(() => {
    if (!live || !current) return;
    let stop = false;
    const load = () => api.raw<JourneyStats>("get", `/api/v1/journeys/${encodeURIComponent(current.journey_id)}/stats`)
      .then((s) => {
        if (stop) return;
        const by = new Map(s.nodes.map((n) => [n.node_id, n]));
        setNodes((ns) => ns.map((n) => ({ ...n, data: { ...n.data, stats: by.get(n.id) } })));
        setTotals(s.totals);
      })
      .catch(() => undefined);
    load();
    const id = window.setInterval(load, 5000);
    return () => { stop = true; window.clearInterval(id); };
  }, [live, current, setNodes]);

  const sel = nodes.find((n) => n.id === selected) ?? null;
  return (
    <LabelCtx.Provider value={typeName}>
      <Link to="/journeys">← {t("journeys.back")}</Link>
      <PageHead
        title={<Space>{current ? current.name : t("journeys.newTitle")}{current && <StatusTag status={current.status} />}{current && current.version > 0 && <Tag color="gold">v{current.version}</Tag>}</Space>}
        sub={totals ? t("journeys.totals", { entered: totals.entered ?? 0, active: totals.active ?? 0, exited: totals.exited ?? 0, converted: totals.converted ?? 0 }) : t("journeys.sub2")}
        extra={
          <Space wrap>
            <Input aria-label={t("journeys.name")} placeholder={t("journeys.name")} value={name} onChange={(e) => setName(e.target.value)} style={{ width: 220 }} maxLength={200} />
            <Button loading={busy === "save"} onClick={() => run("save")}>{t("journeys.save")}</Button>
            <Button loading={busy === "validate"} icon={<CheckCircleOutlined />} onClick={() => run("validate")}>{t("journeys.validate")}</Button>
            <Button type="primary" loading={busy === "publish"} onClick={() => run("publish")}>{t("journeys.publish")}</Button>
            {current?.status === "active" && <Button loading={busy === "pause"} onClick={() => setStatus("pause")}>{t("journeys.pause")}</Button>}
            {current?.status === "paused" && <Button loading={busy === "resume"} onClick={() => setStatus("resume")}>{t("journeys.resume")}</Button>}
          </Space>
        } />
      {problem && <Alert type="error" showIcon role="alert" closable onClose={() => setProblem(null)} style={{ marginBottom: 12 }} message={t("journeys.refused")}
        description={<>{problem.message}{problem.field ? <div className="gk-mono">{problem.field}</div> : null}</>} data-testid="journey-error" />}
      {checked && <Alert type="success" showIcon role="status" style={{ marginBottom: 12 }} message={checked} />}
      <div className="gk-journey">
        <Card size="small" title={t("journeys.palette")} className="gk-palette">
          <Typography.Paragraph type="secondary" style={{ fontSize: 12 }}>{t("journeys.paletteHelp")}</Typography.Paragraph>
          <div role="list" aria-label={t("journeys.palette")}>
            {NODE_TYPES.map((type) => (
              <div key={type} role="listitem" tabIndex={0} draggable className="gk-palette-item" data-testid={`palette-${type}`}
                aria-label={t("journeys.addStep", { type: typeName(type) })}
                style={{ borderLeftColor: COLORS[type] }}
                onDragStart={(e) => { e.dataTransfer.setData(MIME, type); e.dataTransfer.effectAllowed = "move"; }}
                onKeyDown={(e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); add(type, { x: 120 + (nodes.length % 3) * 220, y: 40 + nodes.length * 70 }); } }}>
                <span style={{ color: COLORS[type] }}>{ICONS[type]}</span> {typeName(type)}
              </div>
            ))}
          </div>
        </Card>
        <div className="gk-canvas" ref={wrapper} data-testid="journey-canvas" onDrop={onDrop} onDragOver={(e) => { e.preventDefault(); e.dataTransfer.dropEffect = "move"; }}>
          {nodes.length === 0 && <div className="gk-canvas-hint"><Empty image={Empty.PRESENTED_IMAGE_SIMPLE} description={t("journeys.dropHint")} /></div>}
          <ReactFlow<StepNode, Edge> nodes={nodes} edges={edges} nodeTypes={nodeTypes} onNodesChange={onNodesChange} onEdgesChange={(c) => { setChecked(null); onEdgesChange(c); }}
            onConnect={onConnect} onSelectionChange={({ nodes: s }) => setSelected(s.length === 1 ? s[0].id : null)}
            fitView={initial.nodes.length > 0} fitViewOptions={{ maxZoom: 1 }} deleteKeyCode={["Delete", "Backspace"]} proOptions={{ hideAttribution: true }}
            defaultEdgeOptions={{ type: "smoothstep" }} minZoom={0.3}>
            <Background gap={20} />
            <Controls showInteractive={false} />
            <MiniMap pannable zoomable nodeColor={(n) => COLORS[(n.data as StepData).type] ?? "#ccc"} />
          </ReactFlow>
        </div>
        <Card size="small" title={sel ? t("journeys.stepTitle", { id: sel.id }) : t("journeys.panel")} className="gk-panel" data-testid="step-panel"
          extra={sel && <Button size="small" danger icon={<DeleteOutlined />} aria-label={t("journeys.deleteStep")} onClick={() => { setNodes((ns) => ns.filter((n) => n.id !== sel.id)); setEdges((es) => es.filter((e) => e.source !== sel.id && e.target !== sel.id)); setSelected(null); }} />}>
          {sel ? <StepForm key={sel.id} node={sel} catalog={catalog} onChange={(p) => update(sel.id, p)} /> : <Typography.Text type="secondary">{t("journeys.selectHint")}</Typography.Text>}
        </Card>
      </div>
    </LabelCtx.Provider>
  );
}

// -- the side panel: one form per step type ----------------------------------------------------------

function StepForm({ node, catalog, onChange }: { node: StepNode; catalog: Catalog; onChange: (p: Partial<StepData>) => void }) {
  const { t } = useI18n();
  const d = node.data;
  const cfg = d.config;
  const set = (patch: Record<string, unknown>) => onChange({ config: { ...cfg, ...patch } });
  const segs = useApi((signal) => (d.type === "entry" ? api.raw<Segment[]>("get", "/api/v1/segments", undefined, { signal }) : Promise.resolve([] as Segment[])), [d.type]);
  const chans = useApi((signal) => (d.type === "send" ? api.raw<Channel[]>("get", "/api/v1/channels", undefined, { signal }) : Promise.resolve([] as Channel[])), [d.type]);
  const eventOptions = catalog.events.map((e) => ({ value: e.event, label: e.event }));
  const eventOf = (c: unknown) => ((c as { event?: string } | undefined)?.event ?? "") || undefined;
  const asEvent = (name: string) => ({ kind: "event", event: name, did: true });
  const idFor = (k: string) => `step-${node.id}-${k}`;
  return (
    <Form layout="vertical" size="small" data-testid="step-form">
      {d.error && <Alert type="error" showIcon message={d.error} style={{ marginBottom: 8 }} />}
      <Form.Item label={t("journeys.label")} htmlFor={idFor("label")}>
        <Input id={idFor("label")} value={d.label} maxLength={200} onChange={(e) => onChange({ label: e.target.value })} />
      </Form.Item>
      {d.type === "entry" && (
        <>
          <Form.Item label={t("journeys.entryKind")}>
            <Radio.Group value={cfg.kind} onChange={(e) => onChange({ config: e.target.value === "segment" ? { kind: "segment", segment_id: "", include_existing: true } : { kind: "event", event: asEvent("") } })}
              options={[{ value: "segment", label: t("journeys.entrySegment") }, { value: "event", label: t("journeys.entryEvent") }]} />
          </Form.Item>
          {cfg.kind === "segment" ? (
            <>
              <Form.Item label={t("campaigns.segment")} htmlFor={idFor("segment")}>
                <Select id={idFor("segment")} aria-label={t("campaigns.segment")} showSearch optionFilterProp="label" loading={segs.loading} value={(cfg.segment_id as string) || undefined}
                  onChange={(v) => set({ segment_id: v })} options={(segs.data ?? []).map((s) => ({ value: s.segment_id, label: s.name }))} />
              </Form.Item>
              <Form.Item label={t("journeys.includeExisting")} htmlFor={idFor("existing")}>
                <Switch id={idFor("existing")} checked={Boolean(cfg.include_existing)} onChange={(v) => set({ include_existing: v })} />
              </Form.Item>
            </>
          ) : (
            <Form.Item label={t("journeys.event")} htmlFor={idFor("event")}>
              <Select id={idFor("event")} aria-label={t("journeys.event")} showSearch value={eventOf(cfg.event)} onChange={(v) => set({ event: asEvent(v) })} options={eventOptions} />
            </Form.Item>
          )}
        </>
      )}
      {d.type === "wait" && (
        <>
          <Form.Item label={t("journeys.waitKind")}>
            <Radio.Group value={cfg.until ? "until" : "duration"} onChange={(e) => onChange({ config: e.target.value === "until" ? { until: asEvent(""), timeout: { days: 3 } } : { duration: { days: 1 } } })}
              options={[{ value: "duration", label: t("journeys.waitDuration") }, { value: "until", label: t("journeys.waitUntil") }]} />
          </Form.Item>
          {cfg.until ? (
            <>
              <Form.Item label={t("journeys.event")} htmlFor={idFor("until")}>
                <Select id={idFor("until")} aria-label={t("journeys.event")} showSearch value={eventOf(cfg.until)} onChange={(v) => set({ until: asEvent(v) })} options={eventOptions} />
              </Form.Item>
              <DurationInput id={idFor("timeout")} label={t("journeys.timeout")} value={cfg.timeout as Dur} onChange={(v) => set({ timeout: v })} />
            </>
          ) : <DurationInput id={idFor("duration")} label={t("journeys.duration")} value={cfg.duration as Dur} onChange={(v) => set({ duration: v })} />}
        </>
      )}
      {d.type === "condition" && (
        <div className="gk-panel-rule">
          <Typography.Paragraph type="secondary" style={{ fontSize: 12 }}>{t("journeys.conditionHelp")}</Typography.Paragraph>
          <RuleEditor value={asRootGroup(cfg.rule)} onChange={(g: GroupCond) => set({ rule: g })} catalog={catalog} />
        </div>
      )}
      {d.type === "split" && (
        <>
          {((cfg.branches as { key: string; weight: number }[]) ?? []).map((b, i, all) => (
            <Space key={i} align="end" style={{ marginBottom: 8 }}>
              <Form.Item label={t("journeys.branchKey")} htmlFor={idFor(`bk${i}`)} style={{ marginBottom: 0 }}>
                <Input id={idFor(`bk${i}`)} value={b.key} style={{ width: 90 }} onChange={(e) => set({ branches: all.map((x, j) => (j === i ? { ...x, key: e.target.value } : x)) })} />
              </Form.Item>
              <Form.Item label={t("campaigns.weight")} htmlFor={idFor(`bw${i}`)} style={{ marginBottom: 0 }}>
                <InputNumber id={idFor(`bw${i}`)} min={0.01} value={b.weight} style={{ width: 80 }} onChange={(v) => set({ branches: all.map((x, j) => (j === i ? { ...x, weight: v ?? 1 } : x)) })} />
              </Form.Item>
              {all.length > 2 && <Button aria-label={t("journeys.removeBranch")} icon={<DeleteOutlined />} onClick={() => set({ branches: all.filter((_, j) => j !== i) })} />}
            </Space>
          ))}
          <Button size="small" onClick={() => { const bs = (cfg.branches as { key: string; weight: number }[]) ?? []; set({ branches: [...bs, { key: String.fromCharCode(97 + bs.length), weight: 1 }] }); }}>{t("journeys.addBranch")}</Button>
        </>
      )}
      {d.type === "send" && <SendForm cfg={cfg} set={set} channels={chans.data ?? []} loading={chans.loading} idFor={idFor} />}
      {d.type === "update_tag" && (
        <>
          <Form.Item label={t("journeys.tag")} htmlFor={idFor("tag")} extra={t("journeys.tagHelp")}>
            <Select id={idFor("tag")} aria-label={t("journeys.tag")} showSearch value={(cfg.tag as string) || undefined} onChange={(v) => set({ tag: v })}
              options={catalog.tags.filter((x) => x.kind !== "rule").map((x) => ({ value: x.name, label: x.name }))} />
          </Form.Item>
          <Form.Item label={t("journeys.tagValue")} htmlFor={idFor("tagv")}>
            <Input id={idFor("tagv")} value={cfg.value === true ? "true" : String(cfg.value ?? "")} onChange={(e) => set({ value: e.target.value === "true" ? true : e.target.value === "false" ? false : e.target.value })} />
          </Form.Item>
        </>
      )}
      {d.type === "webhook" && (
        <Form.Item label="URL" htmlFor={idFor("url")}>
          <Input id={idFor("url")} value={(cfg.url as string) ?? ""} placeholder="https://" onChange={(e) => set({ url: e.target.value })} />
        </Form.Item>
      )}
      {d.type === "goal" && (
        <Form.Item label={t("journeys.goalEvent")} htmlFor={idFor("goal")} extra={t("journeys.goalHelp")}>
          <Select id={idFor("goal")} aria-label={t("journeys.goalEvent")} showSearch value={eventOf(cfg.event)} onChange={(v) => set({ event: asEvent(v) })} options={eventOptions} />
        </Form.Item>
      )}
      {d.type === "exit" && <Typography.Text type="secondary">{t("journeys.exitHelp")}</Typography.Text>}
      {d.stats && (
        <div style={{ marginTop: 12 }}>
          <Typography.Text strong>{t("journeys.outcomes")}</Typography.Text>
          <div>{Object.entries(d.stats.outcomes).map(([k, v]) => <Tag key={k}>{k}: {v}</Tag>)}</div>
        </div>
      )}
    </Form>
  );
}

type Dur = { days?: number; hours?: number; minutes?: number } | undefined;

function DurationInput({ id, label, value, onChange }: { id: string; label: string; value: Dur; onChange: (v: Dur) => void }) {
  const { t } = useI18n();
  const v = value ?? {};
  return (
    <Form.Item label={label} htmlFor={id}>
      <Space>
        <InputNumber id={id} aria-label={`${label} · ${t("journeys.days")}`} min={0} value={v.days ?? 0} onChange={(x) => onChange({ ...v, days: x ?? 0 })} addonAfter={t("journeys.days")} style={{ width: 110 }} />
        <InputNumber aria-label={`${label} · ${t("journeys.hours")}`} min={0} value={v.hours ?? 0} onChange={(x) => onChange({ ...v, hours: x ?? 0 })} addonAfter={t("journeys.hours")} style={{ width: 110 }} />
      </Space>
    </Form.Item>
  );
}

function SendForm({ cfg, set, channels, loading, idFor }: { cfg: Record<string, unknown>; set: (p: Record<string, unknown>) => void; channels: Channel[]; loading: boolean; idFor: (k: string) => string }) {
  const { t } = useI18n();
  const tpl = (cfg.template as { variants?: Record<string, { text?: string; subject?: string }>; default_language?: string }) ?? {};
  const variants = tpl.variants ?? {};
  const setText = (lang: "zh" | "en", text: string) => {
    const next = { ...variants };
    if (text) next[lang] = { ...(next[lang] ?? {}), text };
    else delete next[lang];
    set({ template: { ...tpl, variants: next, default_language: next.zh ? "zh" : next.en ? "en" : "zh" } });
  };
  return (
    <>
      <Form.Item label={t("campaigns.channel")} htmlFor={idFor("channel")}>
        <Select id={idFor("channel")} aria-label={t("campaigns.channel")} loading={loading} value={(cfg.channel_id as string) || undefined} onChange={(v) => set({ channel_id: v })}
          options={channels.map((c) => ({ value: c.channel_id, label: `${c.name} · ${c.kind}` }))} />
      </Form.Item>
      <Form.Item label={t("campaigns.textZh")} htmlFor={idFor("zh")}>
        <Input.TextArea id={idFor("zh")} rows={3} value={variants.zh?.text ?? ""} onChange={(e) => setText("zh", e.target.value)} />
      </Form.Item>
      <Form.Item label={t("campaigns.textEn")} htmlFor={idFor("en")}>
        <Input.TextArea id={idFor("en")} rows={2} value={variants.en?.text ?? ""} onChange={(e) => setText("en", e.target.value)} />
      </Form.Item>
    </>
  );
}
