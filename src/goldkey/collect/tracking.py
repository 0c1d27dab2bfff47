"""The tracking API's event model: validation and normalisation of Segment/RudderStack HTTP-spec
events (track, identify, page, screen, group, alias), with the spec's timestamp handling.

This is the hot path, so events are checked by hand rather than through a pydantic model per event;
``api/schemas.py`` holds the pydantic models that document the same shapes in the OpenAPI schema.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from goldkey.core.clock import micros_to_datetime as micros_to_datetime  # re-exported: the tracking path's times
from goldkey.core.errors import InvalidInput, TooLarge
from goldkey.govern.consent import consent_decisions
from goldkey.identity.graph import GROUPS

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")

# Trait keys that carry identifiers; the workspace's custom identifiers are added per workspace.
TRAIT_IDENTIFIERS: dict[str, str] = {
    "email": "email",
    "phone": "phone",
    "wechat_openid": "wechat_openid",
    "wechatOpenId": "wechat_openid",
    "wechat_unionid": "wechat_unionid",
    "wechatUnionId": "wechat_unionid",
    "crm_id": "crm_id",
    "crmId": "crm_id",
}

_TRAIT_KEYS = frozenset(TRAIT_IDENTIFIERS)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _micros(dt: datetime) -> int:
    return (dt - _EPOCH) // _US


# Timestamps (after the clock-skew correction) must stay inside what datetime can represent.
_MIN_US = _micros(datetime(1, 1, 2, tzinfo=UTC))
_MAX_US = _micros(datetime(9999, 12, 30, tzinfo=UTC))


def _parse_ts(value: Any, fieldname: str, record: int | None) -> int | None:
    """Return epoch microseconds of an ISO-8601 timestamp, None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("must be an ISO-8601 timestamp string", field=fieldname, record=record)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"not an ISO-8601 timestamp: {value[:40]!r}", field=fieldname, record=record) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    us = (dt - _EPOCH) // _US
    if not _MIN_US <= us <= _MAX_US:
        raise InvalidInput(f"out of range: {value[:40]!r}", field=fieldname, record=record)
    return us


def _id_str(value: Any, fieldname: str, record: int | None) -> str | None:
    if type(value) is str and value and len(value) <= 200 and value.isprintable() and not value.isspace():
        return value  # the common case, decided in one test
    if value is None or value == "" or (type(value) is str and value.isspace()):
        return None  # blank: no id at all (a space-only userId must not become everyone's id)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput("must be a string or number", field=fieldname, record=record)
    if type(value) is float and not (value.is_integer() and abs(value) < _EXACT_INT):
        # JSON numbers beyond 64 bits arrive as floats, and from 2^53 on two ids 1 apart read as
        # the same float; so do fractions that differ past float precision (0.1 and
        # 0.10000000000000001): they would become one person. (A whole float id below 2^53 keeps
        # the text it always had, 12345.0, so stored identities still match.)
        raise InvalidInput("a numeric id must be a whole number below 2^53 in magnitude; send other ids as strings",
                           field=fieldname, record=record)
    s = str(value)
    if len(s) > 200:
        raise InvalidInput("longer than 200 characters", field=fieldname, record=record)
    if not s.isprintable() and any(unicodedata.category(ch) in _CONTROL for ch in s):
        # not isprintable() alone: no-break and ideographic spaces, zero-width joiners (emoji
        # sequences) and soft hyphens are ordinary text in a name or a handle
        raise InvalidInput("contains control characters", field=fieldname, record=record)
    return s


_EXACT_INT = 2**53
_CONTROL = frozenset({"Cc", "Cs", "Zl", "Zp"})  # control characters, lone surrogates, line/paragraph separators


def merge_context(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``, object by object: a batch's ``context.library`` survives an event that
    sets only ``context.page``, and the event's own value wins wherever both set one."""
    out = dict(base)
    for key, value in own.items():
        under = out.get(key)
        out[key] = merge_context(under, value) if type(under) is dict and type(value) is dict else value
    return out


def _obj(value: Any, fieldname: str, record: int | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("must be a JSON object", field=fieldname, record=record)
    return value


@dataclass(slots=True)
class TrackedEvent:
    """One validated, normalised tracking event, ready for identity resolution and the log."""

    message_id: str
    type: str
    event: str | None
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    group_id: str | None
    previous_id: str | None
    timestamp: int  # epoch microseconds, corrected for client clock skew
    original_timestamp: int | None
    sent_at: int | None
    received_at: int
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    raw_size: int = 0
    identifiers: list[tuple[str, Any]] = field(default_factory=list)
    # the user's own traits objects identifiers are read from (a group call's traits are the group's):
    # the workspace's custom identifier types read the same ones as the built-in types
    id_traits: tuple[dict[str, Any], ...] = ()

    @property
    def seen_at(self) -> int:
        """When the customer was seen through this event (epoch µs): its time, but never after it
        arrived (a client clock years ahead, without sentAt to correct it, must not date a profile's
        first or last activity, or a consent decision, in the future for good)."""
        return self.timestamp if self.timestamp <= self.received_at else self.received_at


def normalise_event(
    body: Any,
    *,
    received_at: int,
    forced_type: str | None = None,
    batch_sent_at: int | None = None,
    batch_context: dict[str, Any] | None = None,
    record: int | None = None,
    max_event_bytes: int = 32 * 1024,
    size: int | None = None,
) -> TrackedEvent:
    """Validate one event and return it normalised.

    ``timestamp`` follows the Segment spec: when the client sent both ``sentAt`` and a timestamp,
    the stored timestamp is ``receivedAt - (sentAt - timestamp)``, which removes the client's clock
    skew; ``originalTimestamp`` keeps what the client said.
    Raises InvalidInput (naming the field and, in a batch, the record index) or TooLarge.
    """
    if not isinstance(body, dict):
        raise InvalidInput("event must be a JSON object", record=record)
    if size is None:
        size = len(orjson.dumps(body))
    if size > max_event_bytes:
        raise TooLarge(f"event is {size} bytes; the limit is {max_event_bytes}", record=record)
    get = body.get  # the hot path: one event of every request; None-valued fields skip the checks
    etype = get("type")
    if forced_type is not None:
        if etype is not None and etype != forced_type:
            raise InvalidInput(f"is {etype!r} but this endpoint takes {forced_type!r}", field="type", record=record)
        etype = forced_type
    if etype not in EVENT_TYPES:
        raise InvalidInput(f"must be one of {', '.join(EVENT_TYPES)}", field="type", record=record)

    v = get("userId")
    if v is None and "userId" not in body:
        v = get("user_id")
    user_id = _id_str(v, "userId", record) if v is not None else None
    v = get("anonymousId")
    if v is None and "anonymousId" not in body:
        v = get("anonymous_id")
    anonymous_id = _id_str(v, "anonymousId", record) if v is not None else None
    v = get("previousId")
    previous_id = _id_str(v, "previousId", record) if v is not None else None
    v = get("groupId")
    group_id = _id_str(v, "groupId", record) if v is not None else None
    if etype == "alias":
        if previous_id is None:
            raise InvalidInput("alias needs previousId", field="previousId", record=record)
        if user_id is None and anonymous_id is None:
            raise InvalidInput("alias needs userId", field="userId", record=record)
    elif user_id is None and anonymous_id is None:
        raise InvalidInput("userId or anonymousId is required", field="userId", record=record)
    if etype == "group" and group_id is None:
        raise InvalidInput("group needs groupId", field="groupId", record=record)

    event = None
    if etype == "track":
        event = get("event")
        if not isinstance(event, str) or not event.strip():
            raise InvalidInput("track needs a non-empty event name", field="event", record=record)
        if len(event) > 200:
            raise InvalidInput("longer than 200 characters", field="event", record=record)
    name = get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput("must be a string", field="name", record=record)

    v = get("properties")
    properties = v if type(v) is dict else _obj(v, "properties", record)
    if etype in ("page", "screen"):
        v = get("category")
        if v is not None:
            # the spec's page/screen category is "added to the properties object" (a property of
            # the same name, when sent, wins)
            if not isinstance(v, str):
                raise InvalidInput("must be a string", field="category", record=record)
            if "category" not in properties:
                properties = {**properties, "category": v}
    v = get("traits")
    traits = v if type(v) is dict else _obj(v, "traits", record)
    v = get("context")
    context = v if type(v) is dict else _obj(v, "context", record)
    if batch_context:
        context = merge_context(batch_context, context)
    v = context.get("traits")
    ctx_traits = v if type(v) is dict else _obj(v, "context.traits", record)
    # A group's traits describe the group (a company's name, e-mail, size), not the user: they are
    # stored under the group and never read as the user's identifiers or consent. The user's own
    # traits are the event's traits, or else its context.traits (mobile SDKs put them there).
    own = ctx_traits if etype == "group" else (traits or ctx_traits)
    if GROUPS in own and etype == "identify":
        field = "traits" if own is traits else "context.traits"
        raise InvalidInput(f"the trait {GROUPS} is reserved: it holds the group memberships group calls make",
                           field=f"{field}.{GROUPS}", record=record)
    if "consent" in own and etype == "identify":  # checked here: a stored event is never refused later
        try:
            consent_decisions(own)
        except InvalidInput as exc:
            field = exc.field if own is traits else f"context.{exc.field}"
            raise InvalidInput(exc.message, field=field, record=record) from None

    message_id = get("messageId")
    if message_id is None or message_id == "":
        message_id = f"gk-{uuid.uuid4()}"
    elif type(message_id) is str:
        if len(message_id) > 200:
            raise InvalidInput("longer than 200 characters", field="messageId", record=record)
    elif not isinstance(message_id, (str, int, float)) or isinstance(message_id, bool):
        raise InvalidInput("must be a string or number", field="messageId", record=record)
    else:
        message_id = str(message_id)
        if len(message_id) > 200:
            raise InvalidInput("longer than 200 characters", field="messageId", record=record)

    v = get("timestamp")
    original = _parse_ts(v, "timestamp", record) if v is not None else None
    if original is None:
        v = get("originalTimestamp")
        original = _parse_ts(v, "originalTimestamp", record) if v is not None else None
    v = get("sentAt")
    sent_at = _parse_ts(v, "sentAt", record) if v is not None else None
    if sent_at is None:
        sent_at = batch_sent_at
    if original is None:
        timestamp = received_at
    elif sent_at is not None:
        timestamp = received_at - (sent_at - original)
    else:
        timestamp = original
    if not _MIN_US <= timestamp <= _MAX_US:
        raise InvalidInput("out of range after the sentAt clock-skew correction", field="timestamp", record=record)

    ident: list[tuple[str, Any]] = []
    if user_id is not None:
        ident.append(("user_id", user_id))
    if anonymous_id is not None:
        ident.append(("anonymous_id", anonymous_id))
    device = context.get("device")
    if isinstance(device, dict) and device.get("id") not in (None, ""):
        ident.append(("device_id", device.get("id")))
    id_traits = tuple(t for t in ((ctx_traits,) if etype == "group" else (traits, ctx_traits)) if t)
    for source in id_traits:
        if not _TRAIT_KEYS.isdisjoint(source):
            for key, id_type in TRAIT_IDENTIFIERS.items():
                v = source.get(key)
                if v not in (None, ""):
                    ident.append((id_type, v))
    return TrackedEvent(
        message_id=message_id,
        type=etype,
        event=event,
        name=name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        group_id=group_id,
        previous_id=previous_id,
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        received_at=received_at,
        properties=properties,
        traits=traits if etype == "group" else own,
        context=context,
        raw_size=size,
        identifiers=ident,
        id_traits=id_traits,
    )


def now_micros() -> int:
    """Return the current time in epoch microseconds."""
    return _micros(datetime.now(UTC))

