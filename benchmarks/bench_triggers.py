"""Real-time trigger benchmark: events at a fixed rate through the writer, latency from the event
being committed (and received) to the trigger's message being queued.

Set-up (benchmark only): ``--users`` customers are created through the writer with identify events
(phone numbers), and their SMS consent is granted in bulk in the operational store. A sink channel
writes to /dev/null; no quiet hours, no caps. One real-time trigger is saved: ``Data Usage`` with
``data_used_pct >= 75``, at most once per customer per month.

Load: ``Data Usage`` events with a uniform ``data_used_pct`` in 0..100 for random customers, built
and normalised as the tracking API does (``normalise_event``), submitted to the writer in small
batches on an open-loop schedule of ``--rate`` events/s for ``--seconds`` (the submitter does not
wait for acknowledgements, as many concurrent HTTP clients would not). Every committed event passes
the runtime's trigger service (``gk.triggers``) through its writer listener; matching ones are
queued to its real-time worker, which evaluates and reserves: one transaction records the firing
(``trigger_firings``), runs the guardrails and writes the ``queued`` message row. Its delivery
worker sends the reserved messages to the sink meanwhile (consent re-checked at send time), by
default rendering and sending them in the server's delivery child process (its CPU is printed
apart; ``GOLDKEY_TRIGGER_DELIVERY_PROCESS=false`` keeps delivery in the process).

Prints the achieved event rate, the firings, the messages by status at the end (the delivery worker
kept up or not), p50/p95/p99 of (a) event committed -> message queued (durably reserved) and (b)
event received -> message queued, the process CPU seconds and the load average. Target: p99 < 50 ms
at 2,000 events/s. Printed, never asserted.

``--http``: the same trigger end to end over the network, against a real ``goldkey serve`` process:
customers identified through ``/v1/batch`` with their SMS consent in ``traits.consent``, the sink
channel, the send policy and the trigger saved through the REST API, then one ``Data Usage`` event
per ``/v1/track`` request sent open-loop at ``--rate`` requests/s (Python sender, one process, 64
keep-alive connections) for ``--seconds``. "Received" is then the server's own receipt of the HTTP
request (the tracking API stamps it); the latencies are read from the server's
``goldkey_trigger_latency_seconds`` histogram on ``/metrics`` (percentiles interpolated within its
buckets, as Prometheus' ``histogram_quantile`` does), beside the generator's own acknowledgement
latencies, the server's and its delivery child's CPU.

Usage::

    python benchmarks/bench_triggers.py [--rate 2000] [--seconds 30] [--users 20000] [--http]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import resource
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_summary, machine_line, percentiles  # noqa: E402

STAGES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])


def _wrap(owner: Any, name: str, label: str) -> None:
    """Time calls of ``owner.name`` in this process (where a worker round's time goes)."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            STAGES[label][0] += time.perf_counter() - t0
            STAGES[label][1] += 1

    setattr(owner, name, timed)


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc (None where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000.0, help="events per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=10, help="events per submission (an SDK flush)")
    ap.add_argument("--threshold", type=int, default=75,
                    help="data_used_pct that fires (101: never, to measure the ingestion alone)")
    ap.add_argument("--http", action="store_true",
                    help="end to end through /v1/track against a `goldkey serve` process (see above)")
    args = ap.parse_args()
    if args.http:
        run_http(args)
        return

    import sqlalchemy as sa

    from goldkey.collect.tracking import normalise_event, now_micros
    from goldkey.ops.tuning import tune_gc
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings
    from goldkey.store.operational import consents, identities, messages, trigger_firings

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="gk-bench-triggers-") as tmp:
        gk = Goldkey.open(Settings(data_dir=Path(tmp)))  # GOLDKEY_* environment settings apply
        tune_gc()  # what a served instance does at start-up (app.py's lifespan): its latency is measured
        try:
            ws = gk.workspaces.create("bench").workspace_id
            t0 = time.perf_counter()
            futs = []
            for k in range(0, args.users, 500):
                evs = [normalise_event({"type": "identify", "userId": f"u{i}",
                                        "traits": {"name": f"客户{i}", "phone": f"+86139{i:08d}"}},
                                       received_at=now_micros()) for i in range(k, min(args.users, k + 500))]
                futs.append(gk.writer.submit_events(ws, evs))
            for f in futs:
                f.result()
            now = datetime.now(UTC)
            with gk.engine.begin() as c:
                pids = c.execute(sa.select(identities.c.profile_id).where(
                    identities.c.workspace_id == ws, identities.c.id_type == "phone")).scalars().all()
                c.execute(consents.insert(), [{"workspace_id": ws, "profile_id": p, "channel": "sms",
                                               "purpose": "marketing", "status": "granted", "source": "bench",
                                               "updated_at": now} for p in pids])
            print(f"set-up (benchmark only): {len(pids):,} customers with consent in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            gk.sender.guardrails.set_policy(ws, {"quiet_hours": None, "caps": {}})
            ch = gk.sender.channels.save(ws, name="sink", kind="sink",
                                         config={"path": "/dev/null", "simulates": "sms"})
            svc = gk.triggers  # the runtime's service: its workers are already running
            svc.create(ws, _trigger_body(ch["channel_id"], args.threshold))
            for owner, name, label in ((svc, "process", "real-time round (total)"),
                                       (svc, "_reserve", "  reserve (firings + guardrails)"),
                                       (gk.sender.guardrails, "lock", "    workspace lock (waits)"),
                                       (gk.sender.guardrails, "reserve_locked", "    guardrails + queued rows"),
                                       (svc, "_deliver_items", "delivery worker round"),
                                       (gk.sender, "deliver", "  Sender.deliver"),
                                       (gk.sender, "emit", "  events (writer)")):
                _wrap(owner, name, label)
            import goldkey.activate.triggers as triggers_module

            _wrap(triggers_module, "audience_addresses", "    addresses (real-time)")
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            load0 = os.getloadavg()

            rng = random.Random(5)
            total = int(args.rate * args.seconds)
            interval = args.batch / args.rate
            sent, pending = 0, []
            start = time.perf_counter()
            behind = 0.0
            while sent < total:
                due = start + (sent / args.batch) * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    behind = max(behind, -wait)
                evs = [normalise_event({"type": "track", "userId": f"u{rng.randrange(args.users)}",
                                        "event": "Data Usage",
                                        "properties": {"data_used_pct": rng.randint(0, 100)}},
                                       received_at=now_micros()) for _ in range(args.batch)]
                pending.append(gk.writer.submit_events(ws, evs))
                sent += args.batch
            for f in pending:
                f.result()
            took = time.perf_counter() - start
            load1 = os.getloadavg()
            time.sleep(1.0)  # the workers' last rounds
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            child_pid = svc.child.pid if svc.child is not None else None
            child_cpu = _proc_cpu(child_pid) if child_pid else None
            svc.stop()
            with gk.engine.connect() as c:
                firings = dict(c.execute(sa.select(trigger_firings.c.status, sa.func.count())
                                         .group_by(trigger_firings.c.status)).all())
                by_status = dict(c.execute(sa.select(messages.c.status, sa.func.count())
                                           .group_by(messages.c.status)).all())
            lat = percentiles(svc.latencies_ms)
            rec = percentiles(svc.received_latencies_ms)
            print(f"\n{total:,} events in {took:.1f} s = {total / took:,.0f} events/s committed "
                  f"(target rate {args.rate:,.0f}/s; submitter at most {behind * 1000:.0f} ms behind schedule)")
            print(f"firings by status: {firings}; messages by status 1 s after the load: {by_status}; "
                  f"worker errors: {svc.last_error}")
            print("event committed -> message queued (reserved, durable): "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in lat.items()))
            print("event received  -> message queued (reserved, durable): "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in rec.items()))
            print(f"process CPU during the load (+1 s): {cpu:.1f} s over {took + 1:.1f} s wall "
                  f"({cpu / (took + 1):.2f} cores); load average before {load0[0]:.2f}, after {load1[0]:.2f}")
            if child_cpu is not None:
                print(f"delivery process (pid {child_pid}) CPU over its life: {child_cpu:.1f} s")
            else:
                print("delivery: in the server process (no delivery child)")
            for label, (sec, calls) in STAGES.items():
                print(f"  {label:<28} {sec:7.2f} s in {calls} calls ({sec / max(calls, 1) * 1000:.1f} ms each)")
            print(f"target: p99 < 50 ms at 2,000 events/s from receipt -> received p99 "
                  f"{rec.get('p99', float('nan')):.1f} ms (committed p99 {lat.get('p99', float('nan')):.1f} ms)")
            emit_summary("bench_triggers", [{"events_per_s": round(total / took), "firings": sum(firings.values()),
                                             "cpu_s": round(cpu, 1), "load_avg": round(load1[0], 2),
                                             "sent": by_status.get("sent", 0),
                                             **{f"committed_{k}_ms": round(v, 1) for k, v in lat.items()},
                                             **{f"received_{k}_ms": round(v, 1) for k, v in rec.items()}}])
        finally:
            gk.close()


def _trigger_body(channel_id: str, threshold: int) -> dict[str, Any]:
    """The benchmark's one real-time trigger (in process and over HTTP alike)."""
    return {"name": "data 75%", "kind": "realtime", "channel_id": channel_id,
            "event": {"kind": "event", "event": "Data Usage",
                      "where": [{"property": "data_used_pct", "op": "gte", "value": threshold}]},
            "window": {"unit": "month"},
            "template": {"variants": {"zh": {"text": "{{ attributes.name }}，流量已用 75%"}}}}


class TrackSource:
    """One ``Data Usage`` event per ``/v1/track`` request: a random customer, a uniform
    ``data_used_pct`` in 0..100, a unique messageId (seeded per worker)."""

    def __init__(self, port: int, auth: str, users: int, run_id: str) -> None:
        self.head = (f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.users, self.run_id = users, run_id
        self._rng: random.Random | None = None

    def __call__(self, wid: int, i: int) -> tuple[bytes, int]:
        if self._rng is None:
            self._rng = random.Random(f"{self.run_id}/{wid}")
        r = self._rng
        body = orjson.dumps({"userId": f"u{r.randrange(self.users)}", "event": "Data Usage",
                             "messageId": f"{self.run_id}-{wid}-{i}",
                             "properties": {"data_used_pct": r.randint(0, 100)}})
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body, 1


def _api(server: Any, method: str, path: str, body: Any, auth: str) -> Any:
    req = urllib.request.Request(server.url + path, data=orjson.dumps(body), method=method,
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return orjson.loads(r.read())


def histogram(text: str, name: str, labels: str) -> list[tuple[float, float]]:
    """The cumulative buckets ``(upper bound, count)`` of one labelled Prometheus histogram."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and labels in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of cumulative buckets, linearly interpolated inside its bucket (what
    Prometheus' ``histogram_quantile`` does); NaN without observations."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank, lo, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / max(count - below, 1e-12))
        lo, below = le, count
    return lo


def run_http(args: argparse.Namespace) -> None:
    """The ``--http`` run (see the module's docstring)."""
    from _common import Server, children, cpu_seconds, open_loop  # noqa: PLC0415

    print(machine_line(), flush=True)
    with Server() as server:
        server.create_workspace()
        server.start()
        admin, write = server.admin_auth, server.write_auth
        t0 = time.perf_counter()
        for k in range(0, args.users, 500):
            batch = [{"type": "identify", "userId": f"u{i}", "messageId": f"setup-{i}",
                      "traits": {"name": f"客户{i}", "phone": f"+86139{i:08d}", "consent": {"sms": True}}}
                     for i in range(k, min(args.users, k + 500))]
            _api(server, "POST", "/v1/batch", {"batch": batch}, write)
        _api(server, "PUT", "/api/v1/send-policy", {"quiet_hours": None, "caps": {}}, admin)
        ch = _api(server, "POST", "/api/v1/channels",
                  {"name": "sink", "kind": "sink", "config": {"path": "/dev/null", "simulates": "sms"}}, admin)
        trig = _api(server, "POST", "/api/v1/triggers", _trigger_body(ch["channel_id"], args.threshold), admin)
        print(f"set-up through the API: {args.users:,} customers identified with SMS consent, channel and trigger "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        time.sleep(1.0)
        pid = server.proc.pid  # type: ignore[union-attr]
        cpu0, kid0 = cpu_seconds(pid), {k: cpu_seconds(k) for k in children(pid)}
        load0 = os.getloadavg()
        source = TrackSource(server.port, write, args.users, f"r{os.getpid()}")
        res = open_loop(server.port, source, rate=args.rate, seconds=args.seconds, conns=64)
        load1 = os.getloadavg()
        time.sleep(1.0)  # the workers' last rounds
        cpu = cpu_seconds(pid) - cpu0
        kid_cpu = sum(cpu_seconds(k) - kid0.get(k, 0.0) for k in children(pid))  # started lazily: maybe new
        text = server.metrics_text()
        listed = {t["trigger_id"]: t for t in server.get_json("/api/v1/triggers", admin)}
        fired = listed.get(trig["trigger_id"], {})
        ack = percentiles([x * 1000 for x in res.latencies])
        print(f"\n{res.requests:,} /v1/track requests in {res.seconds:.1f} s = {res.requests / res.seconds:,.0f}/s "
              f"(target {args.rate:,.0f}/s; answered 200: {res.ok:,}, other: {dict(res.non200)}, errors {res.errors}, "
              f"sends > 10 ms late: {res.late_sends}); acknowledgement p50/p95/p99/max "
              + "/".join(f"{v:.1f}" for v in ack.values()) + " ms")
        print(f"the trigger's firings as the API lists them: {fired.get('firings')}")
        rows: dict[str, Any] = {"requests_per_s": round(res.requests / max(res.seconds, 1e-9)),
                                "server_cpu_s": round(cpu, 1), "load_avg": round(load1[0], 2)}
        for since in ("committed", "received"):
            b = histogram(text, "goldkey_trigger_latency_seconds", f'since="{since}"')
            n = int(b[-1][1]) if b else 0
            qs = {f"p{round(q * 100)}": bucket_quantile(b, q) * 1000 for q in (0.5, 0.95, 0.99)}
            print(f"event {since:<9} -> message queued (server histogram, {n:,} firings): "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in qs.items()))
            rows.update({f"{since}_{k}_ms": round(v, 1) for k, v in qs.items()}, **{f"{since}_firings": n})
        print(f"server CPU during the load (+1 s): {cpu:.1f} s over {res.seconds + 1:.1f} s wall "
              f"({cpu / (res.seconds + 1):.2f} cores); delivery child {kid_cpu:.1f} s; "
              f"generator {res.generator_cpu:.1f} s; "
              f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
        print(f"target: p99 < 50 ms at 2,000 events/s from receipt -> received p99 {rows['received_p99_ms']:.1f} ms "
              "(bucket-interpolated)")
        emit_summary("bench_triggers_http", [rows])


if __name__ == "__main__":
    main()
