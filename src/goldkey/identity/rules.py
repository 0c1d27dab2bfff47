"""Per-workspace identity rules: which identifier types exist, their priority, how many values of a
type one profile may hold, and values that must never link anyone."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

BUILTIN_TYPES: tuple[str, ...] = (
    "user_id",
    "crm_id",
    "wechat_unionid",
    "phone",
    "email",
    "wechat_openid",
    "device_id",
    "anonymous_id",
)

DEFAULT_LIMITS: dict[str, int] = {
    "user_id": 1,
    "crm_id": 1,
    "wechat_unionid": 1,
    "phone": 2,
    "email": 3,
    "wechat_openid": 3,
    "device_id": 10,
    "anonymous_id": 100,
}

# Values seen in real data that stand for "nobody in particular"; they must never merge people.
DEFAULT_BLOCKED: list[str] = ["unknown", "null", "none", "undefined", "n/a", "na", "-", "0", "test", "anonymous"]


class CustomIdentifier(BaseModel):
    """A workspace-defined identifier type read from a trait, e.g. a member-card number."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,39}$", description="Identifier type name.")
    trait: str = Field(description="Trait (identify traits or import column) that carries the value.")
    limit: int = Field(1, ge=1, description="Most values of this type one profile may hold.")


class IdentityRules(BaseModel):
    """Identity-resolution rules of one workspace."""

    priority: list[str] = Field(
        default_factory=lambda: list(BUILTIN_TYPES),
        description="Identifier types, highest priority first. The highest-priority match names the "
        "profile an event belongs to; lower ones merge only when the limits allow.",
    )
    limits: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_LIMITS),
        description="Most distinct values of each type a profile may hold; a merge that would exceed "
        "a limit is refused and recorded as a conflict.",
    )
    blocked_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED),
        description="Values never used to link, for any type (compared case-insensitively).",
    )
    blocked_by_type: dict[str, list[str]] = Field(
        default_factory=lambda: {"phone": ["+8613800000000", "+8613800138000"]},
        description="Values never used to link, per type (phones in E.164 form).",
    )
    custom: list[CustomIdentifier] = Field(default_factory=list, description="Custom identifier types.")

    @field_validator("limits")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if n < 1:
                raise ValueError(f"limit for {k!r} must be at least 1")
        # types not named keep their default limit (a partial document never drops them to 1)
        return {**DEFAULT_LIMITS, **v}

    def all_types(self) -> list[str]:
        """Return every identifier type in priority order (custom types not listed go last)."""
        out = list(self.priority)
        for c in self.custom:
            if c.name not in out:
                out.append(c.name)
        for t in BUILTIN_TYPES:
            if t not in out:
                out.append(t)
        return out

    def limit(self, id_type: str) -> int:
        """Return the per-profile limit for ``id_type``."""
        if id_type in self.limits:
            return self.limits[id_type]
        for c in self.custom:
            if c.name == id_type:
                return c.limit
        return 1

    def is_blocked(self, id_type: str, value: str, region: str = "CN") -> bool:
        """Return True when ``value`` (a normalised identifier) may never link profiles."""
        low = value.strip().lower()
        if low in self._blocked_all:
            return True
        return value in self.blocked_for(id_type, region)

    @property
    def blocked_everywhere(self) -> frozenset[str]:
        """The lower-cased values blocked for every identifier type (``blocked_values``)."""
        return self._blocked_all

    def blocked_for(self, id_type: str, region: str = "CN") -> frozenset[str]:
        """The blocked values of ``id_type`` as entered and in the normal form identifiers of that
        type take (a phone entered without its country code, an e-mail in capitals): a blocked
        value blocks what it names however it was typed in."""
        key = (id_type, region)
        hit = self._blocked_norm.get(key)
        if hit is None:
            from goldkey.identity.normalize import normalize_identifier

            raw = self._blocked_typed.get(id_type, frozenset())
            norm = {n for v in raw if (n := normalize_identifier(id_type, v, region)) is not None}
            hit = self._blocked_norm[key] = frozenset(raw | norm)
        return hit

    def model_post_init(self, _ctx: object) -> None:
        self._blocked_all = frozenset(v.lower() for v in self.blocked_values)
        self._blocked_typed = {k: frozenset(v) for k, v in self.blocked_by_type.items()}
        self._blocked_norm: dict[tuple[str, str], frozenset[str]] = {}
        self._rank = {t: i for i, t in enumerate(self.all_types())}

    def rank(self, id_type: str) -> int:
        """Return the priority rank of ``id_type`` (0 is highest)."""
        return self._rank.get(id_type, len(self._rank))
