"""The send pipeline: guardrails -> render -> channel.send (retries, backoff, timeouts) -> message
log -> ``Message Sent`` / ``Message Failed`` events.

``Sender.send(SendRequest)`` is what campaigns, triggers and journeys call:

1. ``Guardrails.reserve`` loads the customers' addresses (no address: not sent, reason given) and
   atomically claims each allowed customer: a ``queued`` row in ``messages`` (unique per workspace,
   ``message_key`` and profile) and the frequency-cap counters;
2. ``deliver`` claims the queued rows (``queued -> sending`` in one UPDATE per batch, tagged with
   the run's claim id, so two runs never send the same message), renders each customer's template,
   and sends through the channel on a thread pool held to the channel's rate limit;
3. a failure that is safe to retry (``SendResult.retryable``) is retried with exponential backoff
   and jitter ("equal jitter", as AWS's architecture blog describes), up to ``max_attempts``; then the
   message is ``failed`` with the reason (or ``dead`` with its payload, for dead-letter channels);
4. rows are updated and events written in batches through the writer thread.

A message is sent at most once: only a ``queued`` row can be claimed, a timeout whose outcome is
unknown is not retried unless the provider de-duplicates by our message id, and a row left
``sending`` by a crash is marked failed (``recover_interrupted``), never resent.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import struct
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.activate.channel_store import ChannelStore
from goldkey.activate.channels.base import Channel, OutboundMessage, SendResult
from goldkey.activate.guardrails import (
    GUARD_CHUNK,
    Guardrails,
    Prepared,
    SendSpec,
    audience_addresses,
    fill_audience,
)
from goldkey.activate.keys import Keys, load_or_create_key
from goldkey.activate.templates import CompiledTemplate, Rendered, RenderError
from goldkey.audience.common import emit_events, load_profile_values
from goldkey.collect.writer import Writer
from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import InvalidInput
from goldkey.core.ids import new_id
from goldkey.store.operational import messages

BATCH = 2000

# a claimed message row as ``Sender._claim`` selects it (a plain tuple that crosses to a delivery process)
Claimed = namedtuple("Claimed", "message_id profile_id channel_id channel purpose ref attempts message_key created_at")

# a delivered (or failed) message's row, per message: compiled once, run as one DBAPI executemany
# (SQLAlchemy's per-row parameter handling cost more than SQLite's updates)
_FINISH = Prepared(lambda _d: messages.update().where(messages.c.message_id == sa.bindparam("mid")).values(
    status=sa.bindparam("status"), reason=sa.bindparam("reason"), attempts=sa.bindparam("attempts"),
    cost=sa.bindparam("cost"), provider_message_id=sa.bindparam("pmid"), sent_at=sa.bindparam("sent_at"),
    payload=sa.bindparam("payload"), updated_at=sa.bindparam("updated_at"), claim=sa.null()))
# (message row, result, attempts made, payload kept for a dead letter, cost)
Outcome = tuple[Any, SendResult, int, "dict[str, Any] | None", float]


@dataclass
class SendRequest:
    """One message (template) to many customers."""

    workspace_id: str
    channel_id: str
    template: CompiledTemplate
    profile_ids: Sequence[str]
    message_key: str  # identifies the message: the same key never reaches a customer twice
    purpose: str = "marketing"
    ref: str = ""  # campaign:<id> | journey:<id>:<step> ...
    vars: Mapping[str, Any] = field(default_factory=dict)  # vars.<name> for everyone
    vars_by_profile: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per customer (offers ...)
    now: datetime | None = None


@dataclass
class DeliveryReport:
    """What a delivery run did."""

    sent: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0  # not queued any more (another run has them, or already sent)
    cost: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)  # failure reason -> count

    def add(self, other: DeliveryReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.dead += other.dead
        self.skipped += other.skipped
        self.cost += other.cost
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v


@dataclass
class SendReport:
    """The outcome of ``Sender.send``: guardrail decisions and the delivery."""

    requested: int
    message_ids: dict[str, str]  # profile_id -> message_id of the reserved messages
    suppressed: dict[str, str]  # profile_id -> reason
    deferred: dict[str, datetime]  # quiet hours: profile_id -> earliest time to try again (UTC)
    delivery: DeliveryReport
    took_ms: int

    def summary(self) -> dict[str, Any]:
        by_reason: dict[str, int] = {}
        for r in self.suppressed.values():
            key = r.split(":", 1)[0] if r.startswith(("frequency cap", "suppressed", "duplicate")) else r
            by_reason[key] = by_reason.get(key, 0) + 1
        return {"requested": self.requested, "reserved": len(self.message_ids), "suppressed": len(self.suppressed),
                "suppressed_by_reason": by_reason, "deferred": len(self.deferred), **asdict(self.delivery),
                "took_ms": self.took_ms}


_WHOLE = 1 - 1e-9  # a refill computed as 0.9999999999 is a whole token (else waits of 1e-17 s forever)


class TokenBucket:
    """A thread-safe token bucket (rate ``per_second``, capacity ``burst``)."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.capacity = per_second, max(1, burst)
        self.tokens = float(self.capacity)
        self.clock, self.sleep = clock, sleep
        self.last = clock()
        self.lock = threading.Lock()

    def configure(self, per_second: float, burst: int) -> None:
        """Take a new rate and capacity (the channel's settings changed), keeping the bucket."""
        with self.lock:
            self.rate, self.capacity = per_second, max(1, burst)
            self.tokens = min(self.tokens, float(self.capacity))

    def _step(self, tokens: float, last: float, now: float) -> tuple[float, float]:
        """Refill ``tokens`` (as of ``last``) up to ``now`` and take one if there is one: the tokens
        left and the seconds to wait before trying again (0: taken). A clock that went back (a
        monotonic clock restarted with the machine, in a shared bucket's file) gives a full bucket."""
        tokens = self.capacity if now < last else min(float(self.capacity), tokens + (now - last) * self.rate)
        if tokens >= _WHOLE:
            return max(0.0, tokens - 1), 0.0
        return tokens, (1 - tokens) / self.rate

    def take(self) -> None:
        while True:
            with self.lock:
                now = self.clock()
                self.tokens, wait = self._step(self.tokens, self.last, now)
                self.last = now
            if wait == 0.0:
                return
            self.sleep(wait)


def rate_limit_dir(data_dir: Path) -> Path:
    """Where an instance keeps its channels' shared rate-limit buckets."""
    return data_dir / "rate-limits"


def _safe_name(channel_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", channel_id)[:100] or "_"


class SharedTokenBucket(TokenBucket):
    """A token bucket whose state (tokens, time of the last refill) lives in a 16-byte file, changed
    under an exclusive ``flock``: every process of one instance (the server and its delivery child)
    that sends on a channel draws from the same bucket, so their sends together stay within the
    channel's rate limit. ``time.monotonic`` is the system-wide monotonic clock on Linux, the same
    in every process. Within a process a thread lock serialises takes too (``flock`` does not tell
    apart two threads sharing one open file)."""

    _STATE = struct.Struct("dd")

    def __init__(self, path: Path, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(per_second, burst, clock, sleep)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def take(self) -> None:
        while True:
            with self.lock:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                try:
                    raw = os.pread(self.fd, self._STATE.size, 0)
                    now = self.clock()
                    tokens, last = self._STATE.unpack(raw) if len(raw) == self._STATE.size else (self.capacity, now)
                    tokens, wait = self._step(tokens, last, now)
                    os.pwrite(self.fd, self._STATE.pack(tokens, now), 0)
                finally:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
            if wait == 0.0:
                return
            self.sleep(wait)

    def close(self) -> None:
        os.close(self.fd)


def load_addresses(engine: sa.Engine, ws: str, profile_ids: Sequence[str], address_type: str) -> dict[str, str]:
    """``{profile_id: address}``: the profile's ``address_type`` identifier (the smallest value when it
    holds several), else ``attributes.<address_type>``; ``profile_id`` addresses the profile itself.
    One set-based query per chunk through the connection's temporary audience table."""
    ids = list(dict.fromkeys(profile_ids))
    if address_type == "profile_id":
        return {p: p for p in ids}
    out: dict[str, str] = {}
    with engine.connect() as c:
        for k in range(0, len(ids), GUARD_CHUNK):
            fill_audience(c, ids[k : k + GUARD_CHUNK])
            out.update(audience_addresses(c, ws, address_type))
        c.rollback()
    return out


class Sender:
    """Runs sends for campaigns, triggers and journeys."""

    def __init__(self, engine: sa.Engine, writer: Writer, guardrails: Guardrails, channels: ChannelStore,
                 keys: Keys, *, max_attempts: int = 4, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 workers: int = 8, sleep: Callable[[float], None] = time.sleep,
                 rate_dir: Path | None = None) -> None:
        self.engine = engine
        self.writer = writer
        self.guardrails = guardrails
        self.channels = channels
        self.keys = keys
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.workers = workers
        self.sleep = sleep
        # channels' rate-limit buckets: shared through files there with every other process of the
        # instance (the delivery child), or in memory (None)
        self.rate_dir = rate_dir
        self._buckets: dict[str, TokenBucket] = {}
        self._buckets_lock = threading.Lock()

    @classmethod
    def from_goldkey(cls, gk: Any, **kw: Any) -> Sender:
        """The sender of a running instance (``gk``), with its key file under the data directory and
        its channels' rate-limit buckets shared with the instance's other processes."""
        keys = Keys(load_or_create_key(gk.settings.data_dir))
        kw.setdefault("rate_dir", rate_limit_dir(gk.settings.data_dir))
        store = ChannelStore(gk.engine, keys, files_dir=gk.settings.resolved_channel_files_dir())
        return cls(gk.engine, gk.writer, Guardrails(gk.engine), store, keys, **kw)

    # -- the whole pipeline ---------------------------------------------------------------------
    def send(self, req: SendRequest) -> SendReport:
        """Guard, reserve and deliver ``req``; raise InvalidInput / NotFound for a bad request."""
        t0 = time.perf_counter()
        ch = self.channels.open(req.workspace_id, req.channel_id)
        now = as_utc(req.now) or utcnow()
        ids = list(dict.fromkeys(req.profile_ids))
        spec = SendSpec(req.channel_id, req.ref, req.template.template.template_id)
        # addresses are looked up in the reservation's transaction (no address: refused with the reason)
        res = self.guardrails.reserve(req.workspace_id, ch.consent_channel, req.purpose, ids, req.message_key, spec,
                                      now, address_type=ch.address_type)
        delivery = self.deliver(req.workspace_id, list(res.message_ids.values()), req.template, vars=req.vars,
                                vars_by_profile=req.vars_by_profile)
        return SendReport(len(ids), res.message_ids, res.suppressed, res.deferred, delivery,
                          int((time.perf_counter() - t0) * 1000))

    # -- delivery ---------------------------------------------------------------------------------
    def deliver(self, ws: str, message_ids: Sequence[str], template: CompiledTemplate, *,
                vars: Mapping[str, Any] | None = None,
                vars_by_profile: Mapping[str, Mapping[str, Any]] | None = None,
                send: Callable[[str, list[Any]], list[Outcome]] | None = None) -> DeliveryReport:
        """Send the ``queued`` messages among ``message_ids`` (others are skipped: at most once).
        ``send``: who renders and sends the claimed rows (see ``_deliver_batch``)."""
        report = DeliveryReport()
        for k in range(0, len(message_ids), BATCH):
            report.add(self._deliver_batch(ws, list(message_ids[k : k + BATCH]), template, vars or {},
                                           vars_by_profile or {}, send))
        return report

    def _claim(self, ws: str, ids: list[str]) -> list[Any]:
        claim = new_id("clm")
        m = messages.c
        with self.engine.begin() as c:
            c.execute(messages.update().where(m.workspace_id == ws, m.message_id.in_(ids), m.status == "queued")
                      .values(status="sending", claim=claim, updated_at=utcnow()))
            return c.execute(sa.select(m.message_id, m.profile_id, m.channel_id, m.channel, m.purpose, m.ref,
                                       m.attempts, m.message_key, m.created_at)
                             .where(m.message_id.in_(ids), m.claim == claim)).all()

    def _deliver_batch(self, ws: str, ids: list[str], template: CompiledTemplate, common: Mapping[str, Any],
                       per: Mapping[str, Mapping[str, Any]],
                       send: Callable[[str, list[Any]], list[Outcome]] | None = None) -> DeliveryReport:
        """Claim, re-check, send and finish one batch. ``send(ws, rows)`` renders and sends the claimed
        rows and returns their outcomes (default: ``send_rows`` here; the trigger service's delivery
        process does it in a child, which then touches no row: claims and finishes stay here)."""
        rows = self._claim(ws, ids)
        report = DeliveryReport(skipped=len(ids) - len(rows))
        if not rows:
            return report
        rows = self._recheck(ws, rows, report)
        if not rows:
            return report
        if send is None:
            results = self.send_rows(ws, rows, template, common, per)
        else:
            results = send(ws, [Claimed(*r) for r in rows])
        self._finish(ws, results, report)
        return report

    def send_rows(self, ws: str, rows: Sequence[Any], template: CompiledTemplate,
                  common: Mapping[str, Any], per: Mapping[str, Mapping[str, Any]]) -> list[Outcome]:
        """Render and send claimed rows (``Claimed`` or rows of ``_claim``) through their channels;
        return one outcome per row. Reads only: the rows are finished by the caller."""
        by_channel: dict[str, list[Any]] = {}
        for r in rows:
            by_channel.setdefault(r.channel_id, []).append(r)
        results: list[Outcome] = []
        for channel_id, group in by_channel.items():
            ch = self.channels.open(ws, channel_id)
            pids = [r.profile_id for r in group]
            addresses = load_addresses(self.engine, ws, pids, ch.address_type)
            need_values = bool(template.fields) or ch.kind == "call" or "attributes.language" in template.fields
            values = load_profile_values(self.engine, ws, pids) if need_values else {}
            base = self.guardrails.policy(ws).tracking_base_url
            bucket = self._bucket(channel_id, ch)

            def one(r: Any, ch: Channel = ch, addresses: dict[str, str] = addresses,
                    values: dict[str, dict[str, Any]] = values, base: str = base,
                    bucket: TokenBucket = bucket) -> Outcome:
                to = addresses.get(r.profile_id)
                if to is None:
                    return r, SendResult.failed(f"no {ch.address_type} address"), 0, None, 0.0
                try:
                    msg = self._message(ws, r, to, ch, template, values.get(r.profile_id, {}), base,
                                        {**common, **per.get(r.profile_id, {})})
                except RenderError as exc:
                    return r, SendResult.failed(f"template: {exc}"), 0, None, 0.0
                return self._attempt(ch, r, msg, bucket)

            if len(group) == 1 or self.workers <= 1 or not ch.concurrent_sends:
                results += [one(r) for r in group]
            else:
                with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="goldkey-send") as pool:
                    results += list(pool.map(one, group))
        return results

    def _recheck(self, ws: str, rows: list[Any], report: DeliveryReport) -> list[Any]:
        """The claimed rows that may still be sent. A message is reserved (consent, suppressions,
        caps checked) some time before it is sent -- a delivery worker, a throttled campaign, a
        restart -- and a customer who opted out or was suppressed meanwhile must not receive it:
        those rows are failed with the reason (never sent), their cap units given back, and a
        ``Message Failed`` event (stage ``send-check``) records why."""
        groups: dict[tuple[str, str], list[Any]] = {}
        for r in rows:
            groups.setdefault((r.channel, r.purpose), []).append(r)
        stopped: list[tuple[Any, str]] = []
        for (channel, purpose), group in groups.items():
            why = self.guardrails.recheck(ws, channel, purpose, [r.profile_id for r in group])
            stopped += [(r, why[r.profile_id]) for r in group if r.profile_id in why]
        if not stopped:
            return rows
        now = utcnow()
        m = messages.c
        updates = [{"mid": r.message_id, "reason": f"not sent: {why} after it was queued", "updated_at": now}
                   for r, why in stopped]
        with self.engine.begin() as c:
            c.execute(messages.update().where(m.message_id == sa.bindparam("mid"), m.status == "sending").values(
                status="failed", reason=sa.bindparam("reason"), updated_at=sa.bindparam("updated_at"), claim=None),
                updates)
        give_back: dict[tuple[str, str, Any], list[str]] = {}  # rows of one reservation share created_at
        for r, _ in stopped:
            give_back.setdefault((r.channel, r.purpose, r.created_at), []).append(r.profile_id)
        for (channel, purpose, created), pids in give_back.items():
            self.guardrails.release(ws, channel, purpose, pids, as_utc(created) or now)
        report.failed += len(stopped)
        key = "not sent: consent or suppression changed after it was queued"
        report.reasons[key] = report.reasons.get(key, 0) + len(stopped)
        self.emit(ws, [(r.profile_id, "Message Failed", {
            "message_id": r.message_id, "channel_id": r.channel_id, "channel": r.channel, "ref": r.ref,
            "purpose": r.purpose, "message_key": r.message_key, "reason": u["reason"], "status": "failed",
            "stage": "send-check"}) for (r, _), u in zip(stopped, updates, strict=True)], now)
        gone = {r.message_id for r, _ in stopped}
        return [r for r in rows if r.message_id not in gone]

    def _message(self, ws: str, r: Any, to: str, ch: Channel, template: CompiledTemplate, values: dict[str, Any],
                 base: str, extra: Mapping[str, Any]) -> OutboundMessage:
        mid = r.message_id
        keys = self.keys

        def link(url: str) -> str:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"link() needs an http(s) URL, got {url!r}")
            return f"{base}/t/c/{keys.sign('c', mid, url)}"

        unsub = f"{base}/t/u/{keys.sign('u', mid)}"
        out: Rendered = template.render(values, message_id=mid, profile_id=r.profile_id, link=link,
                                        unsubscribe_url=unsub, extra=extra)
        html = out.html
        if html is not None:
            pixel = f'<img src="{base}/t/o/{keys.sign("o", mid)}.gif" width="1" height="1" alt="">'
            html = html.replace("</body>", pixel + "</body>") if "</body>" in html else html + pixel
        md: dict[str, Any] = {"ref": r.ref, "purpose": r.purpose, "message_key": r.message_key}
        if template.template.provider_template:
            md["provider_template"] = template.template.provider_template
        if ch.kind == "call":
            md.update(name=values.get("attributes.name"), city=values.get("attributes.city"),
                      member_tier=values.get("attributes.member_tier"))
        return OutboundMessage(mid, ws, r.profile_id, to, out.text, out.subject, html, out.language, out.params,
                               out.url, unsub, md)

    def _bucket(self, channel_id: str, ch: Channel) -> TokenBucket:
        """The channel's one bucket in this sender (sends in flight keep using it: a changed rate
        is applied to it, never by replacing or closing it)."""
        rl = ch.rate_limit()
        with self._buckets_lock:
            b = self._buckets.get(channel_id)
            if b is None:
                if self.rate_dir is None:
                    b = TokenBucket(rl.per_second, rl.burst, sleep=self.sleep)
                else:
                    b = SharedTokenBucket(self.rate_dir / f"{_safe_name(channel_id)}.bucket", rl.per_second,
                                          rl.burst, sleep=self.sleep)
                self._buckets[channel_id] = b
            elif b.rate != rl.per_second or b.capacity != max(1, rl.burst):
                b.configure(rl.per_second, rl.burst)
        return b

    def close(self) -> None:
        """Close the channels and the rate-limit bucket files (when nothing sends any more)."""
        self.channels.close()
        with self._buckets_lock:
            for b in self._buckets.values():
                if isinstance(b, SharedTokenBucket):
                    b.close()
            self._buckets.clear()

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): exponential with equal jitter."""
        d = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return d / 2 + random.uniform(0, d / 2)

    def _send_with_retries(self, ch: Channel, msg: OutboundMessage, bucket: TokenBucket) -> tuple[SendResult, int]:
        attempts = 0
        while True:
            bucket.take()
            attempts += 1
            try:
                result = ch.send(msg)
            except Exception as exc:  # noqa: BLE001 - a plugin's bug must not stop a campaign
                result = SendResult.failed(f"channel error: {type(exc).__name__}: {exc}")
            if result.ok or not result.retryable or attempts >= self.max_attempts:
                if not result.ok and result.retryable:
                    result = SendResult(False, None, f"{result.reason} (gave up after {attempts} attempts)", True,
                                        detail=result.detail)
                return result, attempts
            self.sleep(self.backoff(attempts))

    def _attempt(self, ch: Channel, r: Any, msg: OutboundMessage, bucket: TokenBucket) -> Outcome:
        result, attempts = self._send_with_retries(ch, msg, bucket)
        payload = asdict(msg) if not result.ok and ch.dead_letter else None
        return r, result, attempts, payload, ch.cost_of(msg) if result.ok else 0.0

    def _finish(self, ws: str, results: list[Outcome], report: DeliveryReport) -> None:
        now = utcnow()
        updates, events = [], []
        opened: dict[str, Channel] = {}
        for r, res, attempts, payload, cost in results:
            ch = opened.get(r.channel_id) or opened.setdefault(r.channel_id, self.channels.open(ws, r.channel_id))
            status = "sent" if res.ok else ("dead" if payload is not None else "failed")
            if res.ok:
                report.sent += 1
                report.cost += cost
            else:
                report.dead += status == "dead"
                report.failed += status == "failed"
                key = (res.reason or "").split(":", 1)[0]
                report.reasons[key] = report.reasons.get(key, 0) + 1
            updates.append({"mid": r.message_id, "status": status, "reason": res.reason,
                            "attempts": r.attempts + attempts, "cost": cost if res.ok else None,
                            "pmid": res.provider_message_id, "sent_at": now if res.ok else None,
                            "payload": orjson.dumps(payload, default=str).decode() if payload else None,
                            "updated_at": now})
            props = {"message_id": r.message_id, "channel_id": r.channel_id, "channel": ch.consent_channel,
                     "kind": ch.kind, "ref": r.ref, "purpose": r.purpose, "message_key": r.message_key}
            if res.ok:
                events.append((r.profile_id, "Message Sent", {**props, "cost": cost,
                                                              "currency": ch.config.currency}))
            else:
                events.append((r.profile_id, "Message Failed", {**props, "reason": res.reason, "status": status,
                                                               "stage": "send"}))
        with self.engine.begin() as c:
            _FINISH.execute_many(c, updates)
        self.emit(ws, events, now)

    def emit(self, ws: str, rows: list[tuple[str, str, dict[str, Any]]], at: datetime | None = None) -> None:
        """Write activation events into the event log through the writer thread."""
        if not rows:
            return

        def run(ctx: Any) -> int:
            with ctx.analytical.transaction() as con:
                return emit_events(ctx.analytical, con, ws, rows, "activate", at)

        self.writer.run_command(run)

    # -- maintenance ------------------------------------------------------------------------------
    def recover_interrupted(self, ws: str) -> int:
        """Mark messages left ``sending`` by a stopped process as failed (outcome unknown: never resent)."""
        m = messages.c
        with self.engine.begin() as c:
            return c.execute(messages.update().where(m.workspace_id == ws, m.status == "sending").values(
                status="failed", reason="interrupted while sending; outcome unknown, not resent", claim=None,
                updated_at=utcnow())).rowcount

    def redrive(self, ws: str, message_ids: Sequence[str]) -> DeliveryReport:
        """Send dead-lettered messages again from their stored payload (raise InvalidInput if none),
        each re-checked first as every queued message is (:meth:`_recheck`): a customer who opted
        out or was suppressed since the message died is not sent it (it is failed with the reason)."""
        m = messages.c
        with self.engine.begin() as c:
            rows = c.execute(sa.select(m.message_id, m.channel_id, m.payload).where(
                m.workspace_id == ws, m.message_id.in_(list(message_ids)), m.status == "dead")).all()
            if not rows:
                raise InvalidInput("none of these messages is dead-lettered", field="message_ids")
            c.execute(messages.update().where(m.message_id.in_([r.message_id for r in rows]), m.status == "dead")
                      .values(status="queued"))
        report = DeliveryReport()
        for r in rows:
            claimed = self._claim(ws, [r.message_id])
            if not claimed:
                report.skipped += 1
                continue
            claimed = self._recheck(ws, list(claimed), report)
            if not claimed:
                continue
            ch = self.channels.open(ws, r.channel_id)
            msg = OutboundMessage(**orjson.loads(r.payload))
            self._finish(ws, [self._attempt(ch, claimed[0], msg, self._bucket(r.channel_id, ch))], report)
        return report

    def test(self, ws: str, channel_id: str, to: str, text: str, subject: str | None = None,
             params: Mapping[str, str] | None = None, provider_template: str | None = None) -> SendResult:
        """Send one test message to an address typed by an operator (no profile, no guardrails,
        not logged)."""
        ch = self.channels.open(ws, channel_id)
        addr = ch.test_address(to)
        md: dict[str, Any] = {"test": True}
        if provider_template:
            md["provider_template"] = provider_template
        msg = OutboundMessage(new_id("tst"), ws, "", addr, text, subject, None, "zh", dict(params or {}), None,
                              None, md)
        return ch.send(msg)

