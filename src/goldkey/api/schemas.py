"""Pydantic models of the public API: one schema per purpose, so internal fields never leak."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrackingEvent(BaseModel):
    """A Segment/RudderStack HTTP-spec event (documentation model; the hot path checks by hand)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["track", "identify", "page", "screen", "group", "alias"] | None = Field(
        None, description="Required inside a batch; implied by the endpoint otherwise."
    )
    messageId: str | None = Field(None, description="Unique id; repeats within the window are dropped.")
    userId: str | None = None
    anonymousId: str | None = None
    event: str | None = Field(None, description="track: the event name.")
    name: str | None = Field(None, description="page/screen: the page or screen name.")
    category: str | None = Field(None, description="page/screen: the category; stored as the `category` property.")
    groupId: str | None = Field(None, description="group: the account id.")
    previousId: str | None = Field(None, description="alias: the earlier id.")
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    timestamp: str | None = Field(None, description="ISO-8601 time of the event on the client.")
    sentAt: str | None = Field(None, description="ISO-8601 time the client sent it (corrects clock skew).")


class TrackingBatch(BaseModel):
    """A batch of events, as the SDKs send to /v1/batch."""

    model_config = ConfigDict(extra="allow")
    batch: list[TrackingEvent]
    sentAt: str | None = None
    context: dict[str, Any] | None = None


class RejectedEvent(BaseModel):
    record: int | str | None
    field: str | None
    error: str


class TrackingAck(BaseModel):
    """Acknowledgement: every counted event is durable."""

    success: bool
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every 4xx/5xx body."""

    error: str
    field: str | None = None
    record: int | str | None = None
    code: str | None = Field(None, description="Error class, e.g. InvalidInput (as Segment's API answers).")
    message: str | None = Field(None, description="The same text as `error` (read by the analytics SDKs).")


class Identity(BaseModel):
    type: str
    value: str
    first_seen_at: datetime | None
    source: str


class Consent(BaseModel):
    channel: str
    purpose: str
    status: str
    source: str
    updated_at: datetime | None


class FeedbackPublic(BaseModel):
    feedback_id: str
    kind: str
    channel: str | None
    topic: str | None
    text: str | None
    rating: int | None
    status: str
    created_at: datetime | None
    sentiment: dict[str, Any] | None = Field(
        default=None,
        description="Text analysis of this feedback once run: `positive` (probability, 0-1), `label` "
        "(positive / neutral / negative) and `topics` (pain-point keys).",
    )


class MergePublic(BaseModel):
    merge_id: str
    winner_id: str
    loser_id: str
    linked_by: dict[str, str]
    created_at: datetime | None
    undone_at: datetime | None


class ConflictPublic(BaseModel):
    type: str
    value: str
    reason: str
    created_at: datetime | None


class ProfilePublic(BaseModel):
    """The 360° profile."""

    profile_id: str
    workspace_id: str
    requested_id: str = Field(description="The id asked for; differs when it was merged into this profile.")
    merged_from: list[str]
    origin: Literal["existing", "new"] = Field(
        description="existing: known from the brand's own records (CRM, orders); new: first met online."
    )
    first_seen_at: datetime | None
    first_seen_source: str
    first_seen_context: dict[str, Any]
    last_seen_at: datetime | None
    attributes: dict[str, Any]
    identities: list[Identity]
    consents: list[Consent]
    traits: dict[str, Any] = Field(description="Computed traits (filled by the traits work).")
    tags: dict[str, Any] = Field(description="Tags (filled by the tags work).")
    scores: dict[str, Any] = Field(description="Model scores (filled by the insight work).")
    insights: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-model details behind the scores, by model name: `version` and the model's "
        "payload, e.g. recommended products (the reasons of a churn or propensity score come from "
        "GET /api/v1/insights/profiles/{profile_id}/reasons).",
    )
    order_summary: dict[str, Any]
    events: list[dict[str, Any]] = Field(description="Most recent events, newest first.")
    feedback: list[FeedbackPublic]
    merges: list[MergePublic]
    identity_conflicts: list[ConflictPublic]


class UnmergeResult(BaseModel):
    merge_id: str
    winner_id: str
    restored_profile_id: str
    identities_moved: int
    analytics_pending: bool = Field(
        False, description="true when the analytical store's part (events and orders back to the restored "
                           "profile) failed and waits for the writer's repair, before its next commit")


class ImportPublic(BaseModel):
    import_id: str
    kind: str
    filename: str
    status: str
    rows_read: int
    accepted: int
    quarantined: int
    duplicates_merged: int
    error: str | None = None
    mapping: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    finished_at: datetime | None = None


class QuarantinedRecord(BaseModel):
    quarantine_id: int
    source: str
    import_id: str | None
    record: str | None
    field: str | None
    value: str | None
    reason: str
    raw: Any = Field(None, description="The record as received: a JSON value (an object, or whatever a batch held)")
    created_at: datetime | None


class WorkspacePublic(BaseModel):
    workspace_id: str
    name: str
    created_at: datetime | None


class KeyCreate(BaseModel):
    kind: Literal["write", "admin"]
    label: str = ""


class KeyCreated(BaseModel):
    kind: str
    secret: str = Field(description="Shown once; only its hash is stored.")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    operational_store: str
    analytical_store: str
    writes: str = Field(description="ok, or 'failing for N s: <error>' while group commits fail with none succeeding")
    queue_depth: int
    queue_capacity: int
    seconds_since_last_commit: float | None
    last_error: str | None
    collectors: dict[str, int] | None = Field(
        None, description="With collector processes configured: how many are configured and running")


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` references inlined (for the OpenAPI request body)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.split("/")[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]
