"""Journeys: a versioned graph of steps a customer walks through, defined as JSON.

A journey is a directed graph (React-Flow friendly: ``nodes`` with ``id``/``type``/``config`` and an
optional canvas ``position``, ``edges`` with ``source``/``target`` and a ``label`` where the step
branches). Node types are registered in ``NODE_TYPES`` (one spec per type: its config model and the
edge labels it needs), the built-in ones through the same registry:

========== ==================================================================== ==================
type       config                                                               outgoing edges
========== ==================================================================== ==================
entry      ``kind`` event (an ``event`` condition + optional profile rule),     one
           segment (``segment_id``), trigger (``trigger_id``)
wait       ``duration`` {days, hours, minutes, seconds}, or ``until`` an event  one / ``event`` +
           condition with a ``timeout``                                         ``timeout``
condition  ``rule`` (the rule language, ``docs/rules.md``)                      ``yes`` + ``no``
split      ``branches`` [{key, weight}] (deterministic salted hash)             one per key
send       ``channel_id``, ``template``, ``purpose``, ``vars``                  one
update_tag ``tag`` (a manual tag), ``value``                                    one
webhook    ``url``, ``headers``, ``body``                                       one
goal       ``event`` (an ``event`` condition): whoever does it exits converted  none (stands apart)
exit       -                                                                    none
========== ==================================================================== ==================

Saving checks everything (``validate_definition``): one entry, edges between existing nodes, the
labels each node needs, every node reachable from the entry, no cycle that does not pass through a
wait (found as strongly connected components, Tarjan 1972, of the graph without its wait nodes), the
rules (the segment checker), templates (``compile_for_workspace``), channels, segments, triggers and
tags a node names. Each error names the node ids. Publishing freezes the draft as an immutable
version; customers finish the version they entered. Re-entry: ``never``, ``after_days`` N, ``always``
(never while still inside). The runner is ``goldkey.activate.journey_engine``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from goldkey.activate.templates import CompiledTemplate, compile_for_workspace
from goldkey.audience.catalog import load_catalog
from goldkey.audience.common import parse_and_check
from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound, loc_path, validation_problem
from goldkey.core.ids import new_id
from goldkey.rules.memory import CompiledRule, compile_rule
from goldkey.rules.model import EventCondition, SequenceCondition, iter_nodes, parse_rule
from goldkey.rules.values import check_rule
from goldkey.store.operational import journey_states, journey_steps, journey_versions, journeys, triggers

J = journeys.c
V = journey_versions.c
S = journey_states.c
L = journey_steps.c

_NODE_ID = re.compile(r"^[\w\-]{1,100}\Z")


# --------------------------------------------------------------------------- the graph model


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Duration(_Cfg):
    """A length of time; the parts add up."""

    days: float = Field(0, ge=0, le=3650)
    hours: float = Field(0, ge=0, le=100_000)
    minutes: float = Field(0, ge=0, le=1_000_000)
    seconds: float = Field(0, ge=0, le=100_000_000)

    @property
    def total_seconds(self) -> float:
        return self.days * 86400 + self.hours * 3600 + self.minutes * 60 + self.seconds

    @model_validator(mode="after")
    def _positive(self) -> Duration:
        if self.total_seconds <= 0:
            raise ValueError("a duration must be longer than zero")
        return self


class EntryConfig(_Cfg):
    """Who enters: on an event (optionally only profiles matching ``condition``), on entering a
    segment, or when a trigger fires."""

    kind: Literal["event", "segment", "trigger"]
    event: dict[str, Any] | None = Field(None, description="an `event` condition matched on each incoming event")
    condition: dict[str, Any] | None = Field(None, description="a rule the profile must match to enter")
    segment_id: str | None = None
    include_existing: bool = Field(False, description="segment entry: admit the current members at publish too")
    trigger_id: str | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> EntryConfig:
        need = {"event": "event", "segment": "segment_id", "trigger": "trigger_id"}[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"an entry of kind {self.kind!r} needs {need!r}")
        return self


class WaitConfig(_Cfg):
    """Wait a fixed time, or until an event (at most ``timeout``)."""

    duration: Duration | None = None
    until: dict[str, Any] | None = Field(None, description="an `event` condition that ends the wait")
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _one(self) -> WaitConfig:
        if (self.duration is None) == (self.until is None):
            raise ValueError("give exactly one of 'duration' or 'until'")
        if self.until is not None and self.timeout is None:
            raise ValueError("a wait 'until' an event needs a 'timeout'")
        if self.duration is not None and self.timeout is not None:
            raise ValueError("'timeout' goes with 'until', not with 'duration'")
        return self


class ConditionConfig(_Cfg):
    rule: dict[str, Any]


class SplitBranch(_Cfg):
    key: str = Field(pattern=r"^[\w\-]{1,40}$")
    weight: float = Field(gt=0, le=1_000_000)


class SplitConfig(_Cfg):
    branches: list[SplitBranch] = Field(min_length=2, max_length=20)

    @model_validator(mode="after")
    def _unique(self) -> SplitConfig:
        keys = [b.key for b in self.branches]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"branch keys must be unique: {', '.join(dup)}")
        return self


class SendConfig(_Cfg):
    channel_id: str
    template: dict[str, Any]
    purpose: str = Field("marketing", max_length=40)
    vars: dict[str, Any] = Field(default_factory=dict)


class UpdateTagConfig(_Cfg):
    tag: str = Field(min_length=1, max_length=100)
    value: str | float | int | bool | None = True


class WebhookConfig(_Cfg):
    url: str = Field(max_length=2000)
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float = Field(10.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return v


class GoalConfig(_Cfg):
    event: dict[str, Any] = Field(description="an `event` condition: doing it means converted")


class ExitConfig(_Cfg):
    pass


@dataclass(frozen=True)
class NodeType:
    """A node type's contract: its config model and the edge labels it needs (``None`` = exactly one
    unlabelled edge; an empty set = no outgoing edge)."""

    config: type[BaseModel]
    labels: Callable[[Any], set[str] | None]
    description: str


NODE_TYPES: dict[str, NodeType] = {}


def register_node_type(name: str, spec: NodeType) -> None:
    """Add a node type (built-in types register the same way)."""
    NODE_TYPES[name] = spec


def _one(_: Any) -> None:
    return None


def _none(_: Any) -> set[str]:
    return set()


for _name, _spec in {
    "entry": NodeType(EntryConfig, _one, "where customers enter"),
    "wait": NodeType(WaitConfig, lambda c: {"event", "timeout"} if c.until is not None else None,
                     "wait a duration, or until an event"),
    "condition": NodeType(ConditionConfig, lambda c: {"yes", "no"}, "branch on a rule"),
    "split": NodeType(SplitConfig, lambda c: {b.key for b in c.branches}, "random split by weight"),
    "send": NodeType(SendConfig, _one, "send a message through a channel"),
    "update_tag": NodeType(UpdateTagConfig, _one, "set a manual tag"),
    "webhook": NodeType(WebhookConfig, _one, "call a URL"),
    "goal": NodeType(GoalConfig, _none, "conversion: customers doing the event exit converted"),
    "exit": NodeType(ExitConfig, _none, "leave the journey"),
}.items():
    register_node_type(_name, _spec)


class Position(BaseModel):
    x: float
    y: float


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    label: str = Field("", max_length=200)
    position: Position | None = Field(None, description="where the console's canvas draws the node")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _NODE_ID.match(v):
            raise ValueError("node id must be 1 to 100 letters, digits, '_' or '-'")
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v not in NODE_TYPES:
            raise ValueError(f"unknown node type {v!r}; one of {', '.join(NODE_TYPES)}")
        return v


class Edge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=100)
    source: str
    target: str
    label: str | None = Field(None, max_length=40)


class Graph(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nodes: list[Node] = Field(min_length=1, max_length=500)
    edges: list[Edge] = Field(default_factory=list, max_length=2000)


class ReEntry(BaseModel):
    """May a customer who finished the journey enter again? Never while still inside."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["never", "after_days", "always"] = "never"
    days: float | None = Field(None, gt=0, le=3650)

    @model_validator(mode="after")
    def _days(self) -> ReEntry:
        if (self.mode == "after_days") != (self.days is not None):
            raise ValueError("give 'days' with mode 'after_days' (and only then)")
        return self


class JourneyDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    graph: Graph
    re_entry: ReEntry = Field(default_factory=ReEntry)


# --------------------------------------------------------------------------- structural validation


def parse_definition(data: Any) -> tuple[JourneyDefinition, dict[str, Any]]:
    """Parse a definition and each node's config; returns (definition, {node_id: config model}).
    Raises InvalidInput naming the field (``graph.nodes[2].config.duration``) and the node id."""
    try:
        d = JourneyDefinition.model_validate(data)
    except ValidationError as exc:  # raised after the block: see goldkey.core.errors.validated
        err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    else:
        err = None
    if err is not None:
        loc = loc_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidInput(_with_node(data, err["loc"], msg), field=loc or "body")
    configs: dict[str, Any] = {}
    for i, n in enumerate(d.graph.nodes):
        try:
            configs[n.id] = NODE_TYPES[n.type].config.model_validate(n.config)
        except ValidationError as exc:  # raised after the block: see goldkey.core.errors.validated
            msg, loc = validation_problem(exc)
        else:
            continue
        raise InvalidInput(f"node {n.id!r} ({n.type}): {msg}",
                           field=f"graph.nodes[{i}].config" + (f".{loc}" if loc else ""))
    return d, configs


def _with_node(data: Any, loc: tuple[Any, ...], msg: str) -> str:
    try:
        if loc[:2] == ("graph", "nodes") and isinstance(loc[2], int):
            return f"node {data['graph']['nodes'][loc[2]].get('id')!r}: {msg}"
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return msg


def check_structure(d: JourneyDefinition, configs: dict[str, Any]) -> dict[str, dict[str | None, str]]:
    """Check the graph's shape; returns ``{node_id: {label: target}}``. Raises InvalidInput naming
    the node ids of the first problem found."""
    nodes = d.graph.nodes
    index = {n.id: i for i, n in enumerate(nodes)}
    dup = sorted({n.id for n in nodes if sum(1 for m in nodes if m.id == n.id) > 1})
    if dup:
        raise InvalidInput(f"node ids must be unique; repeated: {', '.join(dup)}", field="graph.nodes")
    types = {n.id: n.type for n in nodes}
    entries = [n.id for n in nodes if n.type == "entry"]
    if len(entries) != 1:
        raise InvalidInput(f"a journey needs exactly one entry node; found {len(entries)}"
                           + (f": {', '.join(entries)}" if entries else ""), field="graph.nodes")
    goals = [n.id for n in nodes if n.type == "goal"]
    if len(goals) > 1:
        raise InvalidInput(f"a journey has at most one goal node; found {', '.join(goals)}", field="graph.nodes")
    out: dict[str, dict[str | None, str]] = {n.id: {} for n in nodes}
    for k, e in enumerate(d.graph.edges):
        where = f"graph.edges[{k}]"
        for end in ("source", "target"):
            if getattr(e, end) not in index:
                raise InvalidInput(f"edge {e.source!r} -> {e.target!r}: {end} node {getattr(e, end)!r} does not exist",
                                   field=f"{where}.{end}")
        if types[e.target] == "entry":
            raise InvalidInput(f"edge {e.source!r} -> {e.target!r}: nothing may lead into the entry node",
                               field=f"{where}.target")
        if "goal" in (types[e.source], types[e.target]):
            raise InvalidInput(f"edge {e.source!r} -> {e.target!r}: the goal node stands apart (customers land on "
                               "it when they convert, from anywhere); connect no edge to it", field=where)
        if e.label in out[e.source]:
            raise InvalidInput(f"node {e.source!r} has two outgoing edges labelled {e.label!r}", field=where)
        out[e.source][e.label] = e.target
    for n in nodes:
        _check_labels(n, configs[n.id], out[n.id], index[n.id])
    _check_reachable(entries[0], out, [n.id for n in nodes if n.type != "goal"])
    _check_cycles(out, types)
    return out


def _check_labels(n: Node, cfg: Any, edges: dict[str | None, str], i: int) -> None:
    want = NODE_TYPES[n.type].labels(cfg)
    where = f"graph.nodes[{i}]"
    have = set(edges)
    if want is None:
        if have != {None}:
            if not have:
                raise InvalidInput(f"node {n.id!r} ({n.type}) has no outgoing edge; connect it to the next step",
                                   field=where)
            raise InvalidInput(f"node {n.id!r} ({n.type}) needs exactly one unlabelled outgoing edge; has "
                               f"{', '.join(repr(x) for x in sorted(have, key=str))}", field=where)
        return
    if not want:
        if have:
            raise InvalidInput(f"node {n.id!r} ({n.type}) ends the journey; it cannot have outgoing edges",
                               field=where)
        return
    missing, extra = sorted(want - {x for x in have if x}), sorted(str(x) for x in have - want)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing branch {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected label {', '.join(extra)}")
        raise InvalidInput(f"node {n.id!r} ({n.type}) needs edges labelled {', '.join(sorted(want))}: "
                           + "; ".join(parts), field=where)


def _check_reachable(entry: str, out: dict[str, dict[str | None, str]], ids: list[str]) -> None:
    seen, todo = {entry}, [entry]
    while todo:
        for t in out[todo.pop()].values():
            if t not in seen:
                seen.add(t)
                todo.append(t)
    lost = [i for i in ids if i not in seen]
    if lost:
        raise InvalidInput(f"unreachable from the entry node {entry!r}: {', '.join(lost)}", field="graph.edges")


def _check_cycles(out: dict[str, dict[str | None, str]], types: dict[str, str]) -> None:
    """Every cycle must pass through a wait node: Tarjan's strongly connected components of the graph
    without its wait nodes; a component of two or more nodes (or a self-loop) is a cycle without a wait."""
    succ = {n: [t for t in out[n].values() if types[t] != "wait"] for n in out if types[n] != "wait"}
    idx: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    bad: list[list[str]] = []
    counter = 0
    for root in succ:
        if root in idx:
            continue
        work = [(root, 0)]
        while work:  # iterative Tarjan (no recursion limit on large graphs)
            v, pos = work.pop()
            if pos == 0:
                idx[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            kids = succ[v]
            if pos < len(kids):
                work.append((v, pos + 1))
                w = kids[pos]
                if w not in idx:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], idx[w])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == idx[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in succ[v]:
                    bad.append(sorted(comp))
    if bad:
        cyc = bad[0]
        raise InvalidInput(f"cycle without a wait through nodes {', '.join(cyc)}: add a wait node on the loop",
                           field="graph.edges")


# --------------------------------------------------------------------------- compiled journeys


@dataclass
class CompiledNode:
    """A node ready to run: its typed config, its exits, and what it compiled."""

    id: str
    type: str
    config: Any
    next: dict[str | None, str]
    rule: CompiledRule | None = None  # condition rule, entry profile condition
    event: CompiledRule | None = None  # entry event, wait-until event, goal event
    needs_history: bool = False
    template: CompiledTemplate | None = None


@dataclass
class CompiledJourney:
    journey_id: str
    workspace_id: str
    version: int
    definition: JourneyDefinition
    nodes: dict[str, CompiledNode]
    entry: CompiledNode
    goal: CompiledNode | None
    waits_for_events: list[CompiledNode] = field(default_factory=list)


def _rule(gk: Any, ws: str, data: Any, prefix: str) -> Any:
    """Parse and check a rule like a segment's; an event not received yet is allowed (a journey is
    usually built before the traffic), every other problem raises InvalidInput."""
    try:
        return parse_and_check(gk.engine, gk.analytical, ws, data, prefix=prefix)
    except InvalidInput as exc:
        if not exc.message.startswith("unknown event"):
            raise
    rule = parse_rule(data)
    check_rule(rule, load_catalog(gk.engine, ws), None, prefix=prefix)
    return rule


def _event_rule(gk: Any, ws: str, data: Any, prefix: str) -> Any:
    rule = _rule(gk, ws, data, prefix)
    if not isinstance(rule, EventCondition) or not rule.did:
        raise InvalidInput("give one `event` condition (kind 'event', did true): it is matched against each "
                           "incoming event", field=prefix)
    return rule


def _has_history(rule: Any) -> bool:
    return any(isinstance(n, EventCondition | SequenceCondition) for _, n in iter_nodes(rule))


def compile_journey(gk: Any, ws: str, journey_id: str, version: int, data: Any) -> CompiledJourney:
    """Validate a definition completely (structure, rules, templates, channels, segments, triggers,
    tags) and compile it for the engine. Raises InvalidInput naming the node and field."""
    d, configs = parse_definition(data)
    out = check_structure(d, configs)
    catalog = load_catalog(gk.engine, ws)
    nodes: dict[str, CompiledNode] = {}
    for i, n in enumerate(d.graph.nodes):
        cn = CompiledNode(n.id, n.type, configs[n.id], out[n.id])
        where = f"graph.nodes[{i}].config"
        try:
            _compile_node(gk, ws, cn, catalog, where)
        except InvalidInput as exc:
            msg = exc.message
            if not msg.startswith(f"node {n.id!r}"):
                msg = f"node {n.id!r} ({n.type}): {msg}"
            raise InvalidInput(msg, field=exc.field or where) from None
        nodes[n.id] = cn
    entry = next(c for c in nodes.values() if c.type == "entry")
    goal = next((c for c in nodes.values() if c.type == "goal"), None)
    waits = [c for c in nodes.values() if c.type == "wait" and c.event is not None]
    return CompiledJourney(journey_id, ws, version, d, nodes, entry, goal, waits)


def _compile_node(gk: Any, ws: str, cn: CompiledNode, catalog: dict[str, str], where: str) -> None:
    c = cn.config
    if cn.type == "entry":
        if c.kind == "event":
            cn.event = compile_rule(_event_rule(gk, ws, c.event, f"{where}.event"), catalog)
        elif c.kind == "segment":
            _check_segment(gk, ws, c.segment_id, where)
        else:
            _check_trigger(gk, ws, c.trigger_id, where)
        if c.condition is not None:
            rule = _rule(gk, ws, c.condition, f"{where}.condition")
            cn.rule, cn.needs_history = compile_rule(rule, catalog), _has_history(rule)
    elif cn.type == "wait" and c.until is not None:
        cn.event = compile_rule(_event_rule(gk, ws, c.until, f"{where}.until"), catalog)
    elif cn.type == "goal":
        cn.event = compile_rule(_event_rule(gk, ws, c.event, f"{where}.event"), catalog)
    elif cn.type == "condition":
        rule = _rule(gk, ws, c.rule, f"{where}.rule")
        cn.rule, cn.needs_history = compile_rule(rule, catalog), _has_history(rule)
    elif cn.type == "send":
        _check_send(gk, ws, cn, where)
    elif cn.type == "update_tag":
        try:
            tag = gk.tags.get(ws, c.tag)
        except NotFound:
            raise InvalidInput(f"tag {c.tag!r} does not exist", field=f"{where}.tag") from None
        if tag["kind"] == "rule":
            raise InvalidInput(f"tag {c.tag!r} is computed from its rules; a journey can only set manual or model "
                               "tags", field=f"{where}.tag")


def _check_segment(gk: Any, ws: str, sid: str, where: str) -> None:
    try:
        gk.segments.get(ws, sid)
    except NotFound:
        raise InvalidInput(f"segment {sid!r} does not exist", field=f"{where}.segment_id") from None


def _check_trigger(gk: Any, ws: str, tid: str, where: str) -> None:
    with gk.engine.connect() as conn:
        ok = conn.execute(sa.select(triggers.c.trigger_id).where(
            triggers.c.workspace_id == ws, triggers.c.trigger_id == tid)).first()
    if ok is None:
        raise InvalidInput(f"trigger {tid!r} does not exist", field=f"{where}.trigger_id")


def _check_send(gk: Any, ws: str, cn: CompiledNode, where: str) -> None:
    from goldkey.activate.campaigns import check_channel

    c = cn.config
    try:
        check_channel(gk.sender, ws, c.channel_id)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field=f"{where}.channel_id") from None
    try:
        cn.template = compile_for_workspace(gk.engine, ws, c.template)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field=f"{where}.{exc.field or 'template'}") from None
    missing = [v for v in cn.template.template.vars if v not in c.vars]
    if missing:
        raise InvalidInput(f"the template declares vars {', '.join(missing)} but the node gives no value for them",
                           field=f"{where}.vars")


# --------------------------------------------------------------------------- the service


class JourneyService:
    """Save drafts (validated), publish immutable versions, pause / resume, and report counts."""

    def __init__(self, gk: Any) -> None:
        self.gk = gk
        self.engine: sa.Engine = gk.engine
        self.on_change: list[Callable[[], None]] = []  # the engine reloads its compiled journeys

    @classmethod
    def from_goldkey(cls, gk: Any) -> JourneyService:
        return cls(gk)

    def _changed(self) -> None:
        for fn in self.on_change:
            fn()

    def validate(self, ws: str, data: Any, journey_id: str = "draft") -> CompiledJourney:
        """Validate a definition completely; raise InvalidInput naming the node ids."""
        if not isinstance(data, dict):
            raise InvalidInput("send the journey definition as a JSON object", field="body")
        return compile_journey(self.gk, ws, journey_id, 0, data)

    def create(self, ws: str, data: Any) -> dict[str, Any]:
        """Validate and save a new draft journey; raise InvalidInput / Conflict."""
        cj = self.validate(ws, data)
        jid, now = new_id("jny"), utcnow()
        try:
            with self.engine.begin() as c:
                c.execute(journeys.insert().values(journey_id=jid, workspace_id=ws, name=cj.definition.name,
                                                   draft=cj.definition.model_dump_json(), status="draft", version=0,
                                                   created_at=now, updated_at=now))
        except sa.exc.IntegrityError:
            raise Conflict(f"a journey named {cj.definition.name!r} already exists") from None
        return self.get(ws, jid)

    def update(self, ws: str, jid: str, data: Any) -> dict[str, Any]:
        """Replace the draft (published versions never change); raise InvalidInput / Conflict / NotFound."""
        self._row(ws, jid)
        cj = self.validate(ws, data, jid)
        try:
            with self.engine.begin() as c:
                c.execute(journeys.update().where(J.journey_id == jid).values(
                    name=cj.definition.name, draft=cj.definition.model_dump_json(), updated_at=utcnow()))
        except sa.exc.IntegrityError:
            raise Conflict(f"a journey named {cj.definition.name!r} already exists") from None
        return self.get(ws, jid)

    def check(self, ws: str, jid: str) -> dict[str, Any]:
        """Validate the stored draft again (channels or tags may have changed since it was saved)."""
        r = self._row(ws, jid)
        cj = self.validate(ws, orjson.loads(r.draft), jid)
        return {"valid": True, "nodes": len(cj.nodes), "edges": len(cj.definition.graph.edges)}

    def publish(self, ws: str, jid: str, actor: str = "api") -> dict[str, Any]:
        """Freeze the draft as the next version and start it (status active)."""
        r = self._row(ws, jid)
        cj = self.validate(ws, orjson.loads(r.draft), jid)
        now = utcnow()
        with self.engine.begin() as c:
            v = (c.execute(sa.select(sa.func.max(V.version)).where(V.journey_id == jid)).scalar() or 0) + 1
            c.execute(journey_versions.insert().values(journey_id=jid, version=v, workspace_id=ws,
                                                       definition=cj.definition.model_dump_json(),
                                                       published_by=actor, published_at=now))
            cursor = r.entry_cursor
            entry = cj.entry.config
            if cursor is None:  # the first publish: where segment / trigger entries start
                cursor = None if entry.kind == "segment" and entry.include_existing else now
            c.execute(journeys.update().where(J.journey_id == jid).values(
                version=v, status="active", entry_cursor=cursor, updated_at=now))
        self._changed()
        return self.get(ws, jid)

    def set_status(self, ws: str, jid: str, status: Literal["active", "paused"]) -> dict[str, Any]:
        """Pause (nobody enters or moves; states are kept) or resume a published journey."""
        r = self._row(ws, jid)
        if r.version == 0:
            raise Conflict(f"journey {jid!r} has never been published; publish it first")
        with self.engine.begin() as c:
            c.execute(journeys.update().where(J.journey_id == jid).values(status=status, updated_at=utcnow()))
        self._changed()
        return self.get(ws, jid)

    def get(self, ws: str, jid: str) -> dict[str, Any]:
        r = self._row(ws, jid)
        with self.engine.connect() as c:
            versions = [{"version": v.version, "published_at": to_iso(v.published_at), "published_by": v.published_by}
                        for v in c.execute(sa.select(V.version, V.published_at, V.published_by)
                                           .where(V.journey_id == jid).order_by(V.version))]
        return {"journey_id": r.journey_id, "name": r.name, "status": r.status, "version": r.version,
                "definition": orjson.loads(r.draft), "versions": versions,
                "created_at": to_iso(r.created_at), "updated_at": to_iso(r.updated_at)}

    def list(self, ws: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(J.journey_id, J.name, J.status, J.version, J.created_at, J.updated_at)
                             .where(J.workspace_id == ws).order_by(J.created_at.desc())).all()
        return [{"journey_id": r.journey_id, "name": r.name, "status": r.status, "version": r.version,
                 "created_at": to_iso(r.created_at), "updated_at": to_iso(r.updated_at)} for r in rows]

    def version_definition(self, ws: str, jid: str, version: int) -> dict[str, Any]:
        with self.engine.connect() as c:
            d = c.execute(sa.select(V.definition).where(V.journey_id == jid, V.version == version,
                                                        V.workspace_id == ws)).scalar()
        if d is None:
            raise NotFound(f"journey {jid!r} has no version {version}")
        return orjson.loads(d)  # type: ignore[no-any-return]

    def stats(self, ws: str, jid: str) -> dict[str, Any]:
        """Counts for the console: per node, the customers there now and the steps taken there (by
        outcome); in total, entered / active / exited / converted."""
        r = self._row(ws, jid)
        with self.engine.connect() as c:
            occupancy = c.execute(sa.select(S.node_id, S.status, sa.func.count()).where(
                S.journey_id == jid).group_by(S.node_id, S.status)).all()
            visits = c.execute(sa.select(L.node_id, L.outcome, sa.func.count()).where(
                L.journey_id == jid, L.status == "done").group_by(L.node_id, L.outcome)).all()
        definition = orjson.loads(r.draft)
        if r.version:
            definition = self.version_definition(ws, jid, r.version)
        per: dict[str, dict[str, Any]] = {n["id"]: {"node_id": n["id"], "type": n["type"], "current": 0,
                                                    "visits": 0, "outcomes": {}}
                                          for n in definition["graph"]["nodes"]}
        totals = {"entered": 0, "active": 0, "exited": 0, "converted": 0}
        for node_id, status, n in occupancy:
            p = per.setdefault(node_id, {"node_id": node_id, "type": "?", "current": 0, "visits": 0, "outcomes": {}})
            if status in ("active", "waiting"):
                p["current"] += n
                totals["active"] += n
        for node_id, outcome, n in visits:
            p = per.setdefault(node_id, {"node_id": node_id, "type": "?", "current": 0, "visits": 0, "outcomes": {}})
            p["visits"] += n
            key = outcome.split(":", 1)[0]
            p["outcomes"][key] = p["outcomes"].get(key, 0) + n
            if outcome == "entered":
                totals["entered"] += n
            elif outcome == "exited":
                totals["exited"] += n
            elif outcome == "converted":
                totals["converted"] += n
        return {"journey_id": jid, "version": r.version, "status": r.status, "totals": totals,
                "nodes": list(per.values())}

    def _row(self, ws: str, jid: str) -> Any:
        with self.engine.connect() as c:
            r = c.execute(sa.select(journeys).where(J.workspace_id == ws, J.journey_id == jid)).first()
        if r is None:
            raise NotFound(f"journey {jid!r} not found")
        return r
