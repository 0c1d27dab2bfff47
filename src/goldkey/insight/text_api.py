"""Feedback text mining API (see docs/feedback-text.md).

Not yet mounted by ``goldkey.app``: add ``app.include_router(text_api.router)``. Every route takes
an admin token and works in that token's workspace.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.core.errors import validated
from goldkey.insight.text import FeedbackTextDefinition, FeedbackTextService, score_texts

router = APIRouter(prefix="/api/v1/insights", tags=["insights"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_RUN_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR,
    400: {"model": ErrorBody, "description": "Invalid definition, no feedback, or no feedback with text"},
    409: {"model": ErrorBody, "description": "A non-model tag of one of the analysis' tag names exists"},
}


class AnalyzeReport(BaseModel):
    """What a feedback analysis run did."""

    model: str
    version: int = Field(description="The version written to feedback_insights.model_version and tag sources.")
    as_of: str | None
    feedback: int
    analysed: int = Field(description="Feedback records with text that were scored.")
    without_text: int
    insights_written: int
    alerts: int
    alert_events: int = Field(description="New `Service Alert` events written to the event log.")
    tags_changed: dict[str, int]
    metrics: dict[str, Any]
    score_ms: int
    took_ms: int


class SentimentRequest(BaseModel):
    texts: list[str] = Field(description="1-1000 non-empty texts, Chinese or English", min_length=1)


class TextScore(BaseModel):
    text: str
    language: str = Field(description="zh / en (by the share of CJK characters) / unknown")
    sentiment: float | None = Field(description="Probability that the text is positive.")
    label: str = Field(description="positive / neutral / negative")
    topics: list[str]
    model_id: str | None


class SentimentResponse(BaseModel):
    results: list[TextScore]


class TopicRow(BaseModel):
    topic: str
    en: str
    zh: str
    feedback: int
    negative: int
    negative_share: float | None
    complaints: int
    profiles: int
    mean_sentiment: float | None


class TopicSummary(BaseModel):
    feedback: int
    without_topic: int
    labels: dict[str, int]
    model_version: int
    topics: list[TopicRow]


class Alert(BaseModel):
    profile_id: str
    topic: str
    topic_en: str
    topic_zh: str
    contacts: int
    feedback_ids: list[str]
    first_at: str | None
    last_at: str | None
    window_days: int


class AlertList(BaseModel):
    alerts: list[Alert]


def text_service(gk: Any) -> FeedbackTextService:
    """The instance's feedback text service (built with the runtime, see ``Goldkey.open``)."""
    svc: FeedbackTextService = gk.feedback_text
    return svc


_RUN_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": inline_schema(FeedbackTextDefinition.model_json_schema())}}}}


@router.post("/feedback/analyze", response_model=AnalyzeReport, responses=_RUN_ERR, openapi_extra=_RUN_BODY)
async def analyze_feedback(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Score the sentiment and topics of every feedback of the workspace, write `feedback_insights`,
    the model tags (`feedback_sentiment`, `pain_points`, `pain_<topic>`, `service_alert`) and a
    `Service Alert` event per new alert. The body is the definition (all optional)."""
    body = await json_object(request, "the analysis definition")
    return await run_in_threadpool(text_service(gk).analyze, cred.workspace_id, body)


@router.post("/text/sentiment", response_model=SentimentResponse, responses={**_ERR, 400: {"model": ErrorBody}},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": inline_schema(SentimentRequest.model_json_schema())}}}})
async def text_sentiment(request: Request, cred: Admin) -> dict[str, Any]:
    """Score ad-hoc texts (to try the models): language, probability positive, label, topics. The
    body is read as JSON whatever its Content-Type, like every insight route."""
    body = validated(SentimentRequest, await json_object(request, '{"texts": [...]}'))
    return {"results": await run_in_threadpool(score_texts, body.texts)}


@router.get("/feedback/topics", response_model=TopicSummary, responses=_ERR)
def feedback_topics(gk: GK, cred: Admin) -> dict[str, Any]:
    """Per topic of the last analysis: feedback, negative count and share, complaints, profiles."""
    return text_service(gk).topic_summary(cred.workspace_id)


@router.get("/feedback/alerts", response_model=AlertList, responses={**_ERR, 400: {"model": ErrorBody}})
def feedback_alerts(gk: GK, cred: Admin, window_days: int = 30, lookback_days: int = 365,
                    as_of: datetime | None = None, min_contacts: int = 2, active_days: int = 30) -> dict[str, Any]:
    """Current service alerts: a profile with `min_contacts` (2) or more unresolved
    complaints/consultations on one topic within `window_days`, the latest at most `active_days`
    old (uses the topics of the last analysis and the feedback's status now)."""
    d = {"alert_window_days": window_days, "lookback_days": lookback_days, "alert_min_contacts": min_contacts,
         "alert_active_days": active_days, "as_of": as_of.isoformat() if as_of else None}
    return {"alerts": text_service(gk).alerts(cred.workspace_id, d)}
