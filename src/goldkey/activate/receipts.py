"""Responses come back as events: deliveries, opens, clicks, replies and unsubscribes.

Provider receipts (``POST /api/v1/receipts/{channel_id}``) are parsed and verified by the channel
(``Channel.parse_receipts``) and matched to the message log by our message id or the provider's;
opens (``/t/o/{token}.gif``), clicks (``/t/c/{token}``) and unsubscribes (``/t/u/{token}``) carry a
token signed by ``activate.keys`` that names the message, so nobody can act on someone else's. Each
becomes an event in the same event log, on the message's profile: ``Message Delivered``,
``Message Failed`` (``stage: "delivery"``; the sender's own failures carry ``stage: "send"``),
``Message Opened`` (first open only), ``Link Clicked`` (every click), ``Message Replied``,
``Unsubscribed`` -- and an unsubscribe withdraws the consent for the message's channel and purpose
(``govern.consent.set_consent``, audited).

A reply carries no message id: it is matched by the sender's address (the channel's identifier
type, e.g. the phone) to the customer and the latest message this channel sent them. A reply that
is an opt-out keyword (``TD``/``T``/``退订`` as Chinese SMS rules require, Twilio's ``STOP``,
``STOPALL``, ``UNSUBSCRIBE``, ``CANCEL``, ``END``, ``QUIT``) also unsubscribes the customer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.activate.channels.base import Receipt
from goldkey.activate.guardrails import mask
from goldkey.activate.sender import Sender
from goldkey.core.clock import utcnow
from goldkey.core.errors import GoldkeyError, NotFound
from goldkey.govern.consent import merged_away_owners, set_consent, standing_merges
from goldkey.store.operational import identities, merges, messages, profiles

_EVENT = {"delivered": "Message Delivered", "failed": "Message Failed", "opened": "Message Opened",
          "clicked": "Link Clicked", "replied": "Message Replied", "unsubscribed": "Unsubscribed"}
OPT_OUT = {"TD", "T", "退订", "退", "取消订阅", "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"}


def is_opt_out(text: str | None) -> bool:
    """Whether a reply asks to stop the messages (the whole reply is a keyword, any case, spaces or
    trailing punctuation ignored)."""
    if not text:
        return False
    word = text.strip().strip("。.!！ ").upper().replace(" ", "")
    return word in OPT_OUT


class Receipts:
    """Turns provider receipts and tracking hits into message-log updates and events."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.engine = sender.engine

    def _message(self, mid: str) -> Any:
        with self.engine.connect() as c:
            row = c.execute(sa.select(messages).where(messages.c.message_id == mid)).first()
        if row is None:
            raise NotFound("unknown link")
        return row

    def provider(self, ws: str, channel_id: str, body: bytes, headers: Mapping[str, str],
                 query: Mapping[str, str]) -> dict[str, int]:
        """Handle a provider callback; raise Unauthorized for a bad signature."""
        ch = self.sender.channels.open(ws, channel_id)
        matched = unmatched = 0
        for rc in ch.parse_receipts(body, headers, query):
            row = self._match(ws, channel_id, ch.address_type, rc)
            if row is None:
                unmatched += 1
                continue
            matched += 1
            self.record(row, rc)
            if rc.status == "replied" and is_opt_out(rc.text):
                self.record(row, Receipt("unsubscribed", message_id=row.message_id, reason=f"replied {rc.text!r}",
                                         from_address=rc.from_address))
        return {"matched": matched, "unmatched": unmatched}

    def _match(self, ws: str, channel_id: str, address_type: str, rc: Receipt) -> Any:
        m = messages.c
        q = sa.select(messages).where(m.workspace_id == ws, m.channel_id == channel_id)
        if rc.message_id:
            q = q.where(m.message_id == rc.message_id)
        elif rc.status == "replied" and rc.from_address:
            i, p, g = identities.c, profiles.c, merges.c
            customer = (sa.select(p.canonical_id).join(identities, i.profile_id == p.profile_id)
                        .where(i.workspace_id == ws, i.id_type == address_type, i.id_value == rc.from_address)
                        .scalar_subquery())
            # the customer's messages: logged under them, under a profile merged into them since, or
            # under a profile one of those was merged into while the message went out (a merge undone
            # since). The candidates' messages are found by profile (ix_messages_profile), then checked.
            theirs = sa.select(p.profile_id).where(p.workspace_id == ws, p.canonical_id == customer)
            g2 = merges.alias("g2")
            were_in = sa.select(g2.c.winner_id).where(g2.c.workspace_id == ws, g2.c.loser_id.in_(theirs),
                                                       g2.c.undone_at.is_not(None))
            was_in = sa.exists().where(g.workspace_id == ws, g.loser_id.in_(theirs), g.winner_id == m.profile_id,
                                       g.undone_at.is_not(None), m.sent_at >= g.created_at,
                                       m.sent_at <= g.undone_at)
            # only a message that went out can be answered (not one refused or still queued), the
            # latest sent first
            q = (q.where(m.profile_id.in_(sa.union(theirs, were_in)), m.sent_at.is_not(None),
                         sa.or_(m.profile_id.in_(theirs), was_in))
                 .order_by(m.sent_at.desc()).limit(1))
        elif rc.provider_message_id:
            q = q.where(m.provider_message_id == rc.provider_message_id)
        else:
            return None
        with self.engine.connect() as c:
            return c.execute(q).first()

    def record(self, row: Any, rc: Receipt) -> bool:
        """Apply one receipt to its message; returns whether an event was written (repeats of a
        delivery or an open are not)."""
        m = messages.c
        now = rc.at or utcnow()
        values: dict[str, Any] = {"updated_at": utcnow()}
        cond = [m.message_id == row.message_id]
        if rc.status == "delivered":
            values.update(status="delivered", delivered_at=now)
            cond.append(m.delivered_at.is_(None))
        elif rc.status == "failed":
            values.update(status="failed", reason=f"delivery failed: {rc.reason or 'no reason given'}")
            cond.append(m.status.in_(["sent", "sending"]))
        elif rc.status == "opened":
            values.update(opened_at=now)
            cond.append(m.opened_at.is_(None))
        elif rc.status == "clicked":
            values.update(clicked_at=sa.func.coalesce(m.clicked_at, now))
        with self.engine.begin() as c:
            changed = c.execute(messages.update().where(*cond).values(**values)).rowcount
        if not changed and rc.status != "unsubscribed" and rc.status != "replied":
            return False
        props: dict[str, Any] = {"message_id": row.message_id, "channel_id": row.channel_id,
                                 "channel": row.channel, "ref": row.ref, "purpose": row.purpose}
        if rc.status == "failed":
            props["stage"] = "delivery"
        if rc.reason:
            props["reason"] = rc.reason
        if rc.text:
            props["text"] = rc.text[:2000]
        if rc.status == "unsubscribed":
            for who in self._address_owners(row, rc.from_address):
                set_consent(self.engine, row.workspace_id, who, row.channel, "denied", purpose=row.purpose,
                            source=f"unsubscribe:{row.message_id}"[:60], actor="unsubscribe", on_live=False)
        self.sender.emit(row.workspace_id, [(row.profile_id, _EVENT[rc.status], props)])
        return True

    def _address_owners(self, row: Any, address: str | None) -> list[str]:
        """Whose an unsubscribe from message ``row`` is: the customer whose address it went to.
        Usually the message's live profile; but while two profiles are merged the message may have
        gone to the merged-away customer's phone (which the survivor holds since), and that customer
        opted out, not the survivor, whose own decision stays (an undo gives the decision back with
        them, as an identify's: :class:`goldkey.govern.consent.ConsentCollector`); and once the merge
        is undone, the phone is that customer's again. The address is the reply's sender, else the
        message's (masked in the log: the identifiers that mask to it). An identifier a standing
        merge brought names its merged-away profile; one an undone merge of the message's profile
        gave back names its holder now (by the same rule). When the masked address fits several,
        each records the opt-out."""
        ws = row.workspace_id

        def fits(v: str) -> bool:
            return v == address if address else mask(v) == row.address

        with self.engine.connect() as c:
            canon = c.execute(sa.select(profiles.c.canonical_id).where(
                profiles.c.workspace_id == ws, profiles.c.profile_id == row.profile_id)).scalar()
            if canon is None:
                return [row.profile_id]
            try:
                id_type = self.sender.channels.open(ws, row.channel_id).address_type
            except GoldkeyError:  # the channel is gone: its address type with it
                return [canon]
            i, p, m = identities.c, profiles.c, merges.c
            held = {v for v in c.execute(sa.select(i.id_value).where(
                i.workspace_id == ws, i.profile_id == canon, i.id_type == id_type)).scalars() if fits(v)}
            # an undo since may have given the address back with the customer it came with: a merge
            # of the message's profile that stood when the message went out
            went = row.sent_at or row.created_at
            undone = c.execute(sa.select(m.detail).where(
                m.workspace_id == ws, m.undone_at.is_not(None), m.winner_id.in_(sorted({row.profile_id, canon})),
                m.created_at <= went, m.undone_at >= went)).scalars()
            back = {v for d in undone for t, v in orjson.loads(d).get("loser_identities", [])
                    if t == id_type and fits(v)} - held
            holder = {v: canon for v in held}
            if back:
                holder.update(c.execute(sa.select(i.id_value, p.canonical_id).join(
                    profiles, p.profile_id == i.profile_id).where(
                    i.workspace_id == ws, i.id_type == id_type, i.id_value.in_(sorted(back)))).all())
            if not holder:
                return [canon]
            live = set(holder.values())
            owner = merged_away_owners(standing_merges(c, ws, live), {(ws, id_type, v) for v in holder})
        return sorted({owner.get((ws, id_type, v), h) for v, h in holder.items()})

    # -- tracking hits ------------------------------------------------------------------------------
    def open(self, token: str) -> None:
        (mid,) = self.sender.keys.verify("o", token)
        self.record(self._message(mid), Receipt("opened", message_id=mid))

    def click(self, token: str) -> str:
        """Record the click; return the URL to redirect to."""
        mid, url = self.sender.keys.verify("c", token)
        row = self._message(mid)
        rc = Receipt("clicked", message_id=mid)
        self.record(row, rc)
        return str(url)

    def unsubscribe_target(self, token: str) -> Any:
        (mid,) = self.sender.keys.verify("u", token)
        return self._message(mid)

    def unsubscribe(self, token: str) -> Any:
        row = self.unsubscribe_target(token)
        self.record(row, Receipt("unsubscribed", message_id=row.message_id))
        return row
