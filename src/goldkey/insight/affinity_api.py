"""Cross-sell API: association rules, category gaps, recommendations and lookalikes
(see docs/cross-sell.md).

Not yet mounted by ``goldkey.app``: add ``app.include_router(affinity_api.router)``. Every route
takes an admin token and works in that token's workspace.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.insight.affinity import AffinityDefinition, AffinityService
from goldkey.insight.lookalike import LookalikeRequest, LookalikeService
from goldkey.insight.recommend import RecommendDefinition, RecommendService

router = APIRouter(prefix="/api/v1/insights", tags=["insights"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody},
                                         400: {"model": ErrorBody}}


class Rule(BaseModel):
    """One association rule X -> Y."""

    antecedent: list[str]
    consequent: list[str]
    support: float = Field(description="Share of transactions holding X and Y.")
    confidence: float = Field(description="Share of transactions with X that also hold Y: P(Y | X).")
    lift: float = Field(description="confidence / support(Y); 1 = independent.")
    leverage: float
    conviction: float | None = Field(description="(1 - support(Y)) / (1 - confidence); null = never fails.")
    antecedent_support: float
    consequent_support: float
    count: int = Field(description="Transactions holding X and Y.")


class RuleList(BaseModel):
    version: int
    scope: str
    level: str
    transactions: int
    matched: int = Field(description="rules passing the filters; `rules` holds the first `limit` by lift")
    rules: list[Rule]


class Gap(BaseModel):
    """Customers who bought category A: how many also bought B, how many never did."""

    category_a: str
    category_b: str
    a_buyers: int
    both: int
    never_b: int
    confidence: float
    lift: float | None
    only_a: int = Field(description="Customers whose only category is A.")
    offer_sku: str | None = Field(description="The B product most chosen by customers who bought both.")


class CustomerGap(BaseModel):
    category: str
    because_of: str
    confidence: float
    lift: float | None
    offer_sku: str | None
    reason: str


class GapList(BaseModel):
    version: int
    profile_id: str | None = None
    categories: list[str] | None = None
    gaps: list[Gap] | list[CustomerGap]


class RunReport(BaseModel):
    model: str
    version: int
    as_of: str | None
    metrics: dict[str, Any]
    took_ms: int


class TrainReport(RunReport):
    method: str
    profiles_written: int


class RecItem(BaseModel):
    sku: str
    score: float
    reason: str


class NextBest(BaseModel):
    sku: str
    category: str | None
    source: str = Field(description="category_gap, rule or recommender")
    reason: str
    score: float | None = None


class ProfileRecs(BaseModel):
    profile_id: str
    version: int
    items: list[RecItem]
    next_best: NextBest | None


class SimilarItem(BaseModel):
    sku: str
    cosine: float
    co_buyers: int


class SimilarItems(BaseModel):
    sku: str
    version: int
    similar: list[SimilarItem]


class Lookalike(BaseModel):
    profile_id: str
    score: float = Field(description="the PU classifier's score: ranks customers by likeness to the seed, "
                                     "not a probability (read the validation's recall for the audience's quality)")


class LookalikeReport(BaseModel):
    seed_size: int
    seed_with_features: int
    method: str
    classifier: str
    as_of: str | None
    validation: dict[str, Any] | None = None
    candidates: int
    c: float
    lookalikes: list[Lookalike]
    segment: str | None
    note: str
    model: str | None = Field(None, description="with a name: the model the audience is kept as")
    version: int | None = None
    score_field: str | None = Field(None, description="with a name: scores.<score_field> holds the audience")
    scores_written: int | None = None
    took_ms: int


def _body(schema: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": False, "content": {"application/json": {
        "schema": inline_schema(schema.model_json_schema())}}}}


@router.post("/affinity/run", response_model=RunReport, responses=_ERR, openapi_extra=_body(AffinityDefinition))
async def run_affinity(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Mine association rules (baskets and customer histories, by SKU and by category) and the
    category gaps; saves a new `affinity` model version."""
    body = await json_object(request)
    return await run_in_threadpool(AffinityService.from_goldkey(gk).run, cred.workspace_id, body)


@router.get("/affinity/rules", response_model=RuleList, responses=_ERR)
def get_rules(gk: GK, cred: Admin, scope: Literal["basket", "customer"] = "basket",
              level: Literal["sku", "category"] = "sku", min_support: float = Query(0.0, ge=0, le=1),
              min_confidence: float = Query(0.0, ge=0, le=1), min_lift: float = Query(0.0, ge=0),
              antecedent: str | None = None, consequent: str | None = None,
              limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
    """Stored rules of the latest affinity model, by descending lift, filtered."""
    return AffinityService.from_goldkey(gk).rules(
        cred.workspace_id, scope=scope, level=level, min_support=min_support, min_confidence=min_confidence,
        min_lift=min_lift, antecedent=antecedent, consequent=consequent, limit=limit)


@router.get("/affinity/gaps", response_model=GapList, responses=_ERR)
def get_gaps(gk: GK, cred: Admin, category_a: str | None = None, category_b: str | None = None,
             profile_id: str | None = None, min_confidence: float = Query(0.0, ge=0, le=1)) -> dict[str, Any]:
    """"Bought A, never B" counts per pair of categories, or one customer's gaps (`profile_id`)."""
    return AffinityService.from_goldkey(gk).gaps(cred.workspace_id, category_a=category_a, category_b=category_b,
                                                 profile_id=profile_id, min_confidence=min_confidence)


@router.post("/recommendations/train", response_model=TrainReport, responses=_ERR,
             openapi_extra=_body(RecommendDefinition))
async def train_recommendations(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Evaluate popularity / cosine / EASE on a time split, refit the best, save a `recommend`
    model version and write each customer's top-N and next best product."""
    body = await json_object(request)
    return await run_in_threadpool(RecommendService.from_goldkey(gk).train, cred.workspace_id, body)


@router.get("/recommendations/items/{sku}", response_model=SimilarItems, responses=_ERR)
def similar_items(sku: str, gk: GK, cred: Admin, limit: int = Query(10, ge=1, le=200)) -> dict[str, Any]:
    """Items most often bought by the buyers of `sku` (cosine over buyers)."""
    return RecommendService.from_goldkey(gk).similar(cred.workspace_id, sku, limit)


@router.get("/recommendations/{profile_id}", response_model=ProfileRecs, responses=_ERR)
def profile_recommendations(profile_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """A customer's stored recommendations (with reasons) and next best product."""
    return RecommendService.from_goldkey(gk).for_profile(cred.workspace_id, profile_id)


@router.post("/lookalikes", response_model=LookalikeReport, responses=_ERR, openapi_extra=_body(LookalikeRequest))
async def lookalikes(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Score every customer against a seed (`segment_id` or `profile_ids`) by positive-unlabelled
    learning; returns the top N with scores and the held-out validation of the seed."""
    body = await json_object(request)
    return await run_in_threadpool(LookalikeService.from_goldkey(gk).find, cred.workspace_id, body)
