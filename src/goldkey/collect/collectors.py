"""Collector processes: the tracking API served by child processes in front of the one writer.

Why: a Goldkey server is one Python process, and everything in it shares one interpreter lock. On
the tracking path about half of the server's CPU goes to reading HTTP requests, parsing their JSON
and validating and normalising each event (``normalise_event``), and half to the writer's group
commits (identity resolution, both stores). In one process the two halves take turns on one core;
with collectors (``goldkey serve --collectors N``, setting ``collectors``) the first half runs in
``N`` child processes, on the other cores, and the server process keeps its interpreter for the
writer. This is the "several collector processes" step of the scale path in ARCHITECTURE.md, with
the event bus between them a local socket pair (NATS JetStream is the step after it).

What runs where:

* each **collector** (``python -m goldkey.collect.collectors``) listens on ``collect_port`` (every
  collector binds it with ``SO_REUSEPORT``, so the kernel spreads connections over them) and
  answers ``POST /v1/track|identify|page|screen|group|alias|batch`` with exactly the code of the
  server's own tracking API (``goldkey.api.tracking.handle``: size limits, gzip, JSON, write key,
  validation, the answer's JSON, errors naming the field). It authenticates write keys itself
  against the operational store (reads only, cached as in the server) and hands the validated
  events to the server over its socket pair; it never writes a store. ``GET /healthz`` answers for
  the collector; any other path is a 404 that names the API's port. Only the tracking API is
  served there: the REST API and the console stay on ``port``, which also keeps taking tracking
  calls itself.
* the **server** reads each collector's socket on a thread of its own, submits the events to the
  writer as its own tracking API does, and answers when the group commit is durable, so an
  acknowledgement from a collector means exactly what one from the server means. Rejected events
  are sent to the server to be quarantined; the collectors' received and rejected counts are added
  to the server's ``/metrics`` every second.

Durability and failure: a collector answers 200 only after the server's answer, which goes back on
the connection the request came on. If the server dies, every collector sees its socket close and
exits at once (requests in flight get no answer, so SDKs retry them, de-duplicated by
``messageId``); a collector that dies is started again by the server (with a growing back-off when
it keeps dying). Collectors run in a session of their own, so a terminal's Ctrl-C reaches only the
server, which stops the collectors first (they finish the requests they hold), then the writer. A
write key revoked on the server is dropped from every collector's cache before the revocation
returns.

The wire format is a length-prefixed pickle per message (the socket pair is private to the server
and its own children): ``(rid, op, args)`` to the server, ``(rid, ok, value)`` back. Events travel
as tuples of their fields (for identity resolution, the profiles and the server's listeners) with
their event-log columns already built by the collector (``writer.event_table``, as Arrow IPC), so
the server's writer only adds the profile each resolved to.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import os
import pickle
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from goldkey.core.children import child_env

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 30.0
STATS_SECONDS = 1.0
PREBUILD_MIN_EVENTS = 32  # requests with fewer events leave their event-log columns to the writer
FORGET_WAIT_SECONDS = 2.0  # a revocation waits this long at most for each collector's cache


def _event_fields() -> tuple[Any, Any]:
    from dataclasses import fields

    from goldkey.collect.tracking import TrackedEvent

    return TrackedEvent, operator.attrgetter(*(f.name for f in fields(TrackedEvent)))


# events cross as tuples of their fields, rebuilt on the other side: a third cheaper both ways than
# pickling the (slotted) dataclass instances themselves (~1.2 + 1.9 us an event instead of 2.5 + 2.8)
_EVENT, _fields = _event_fields()


def _write_table(table: Any) -> bytes:
    """An Arrow table as IPC stream bytes (~0.1 us a row to write and to read back)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _read_table(data: bytes) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(data).read_all()


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=5)
    return _LEN.pack(len(data)) + data


# --------------------------------------------------------------------------- the server's side
class _Conn:
    """One running collector process and its socket: a thread reads its requests, another sends
    the answers (so the writer thread, which completes the commits, only queues them and is never
    held up by a collector that stopped reading). An answer goes back on the connection its
    request came on, never to a collector started after it."""

    def __init__(self, pool: CollectorPool, link: _Link) -> None:
        self.pool, self.link = pool, link
        self.closed = False
        self.ready = False  # the collector listens on the port (its first message)
        self._answers: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        ours, theirs = socket.socketpair()
        try:
            env = child_env(GOLDKEY_COLLECTOR_SETTINGS=pool.settings.model_dump_json())
            # a session of its own: Ctrl-C in a terminal (or a service manager signalling the whole
            # group) reaches the server alone, which then stops its collectors in order
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-m", "goldkey.collect.collectors", str(theirs.fileno()), str(link.index)],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        name = f"goldkey-collector-{link.index}"
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name=name + "-answers", daemon=True)
        self._reader.start()
        self._sender.start()

    @property
    def running(self) -> bool:
        """Taking requests: started, listening on the port (it said so), and not gone since."""
        return self.ready and self.alive

    @property
    def alive(self) -> bool:
        """Started (maybe not listening yet) and not gone since."""
        return not self.closed and self.proc.poll() is None

    def send(self, obj: Any) -> None:
        if not self.closed:
            self._answers.put(_frame(obj))

    def answer_commit(self, rid: int, fut: Any) -> None:
        """A group commit's outcome for request ``rid`` (called on the writer thread)."""
        exc = fut.exception()
        if exc is None:
            res = fut.result()
            self.send((rid, True, (res.accepted, res.duplicates)))
        else:
            self.send((rid, False, _public_error(exc)))

    def _send_loop(self) -> None:
        while True:
            data = self._answers.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError:  # the collector is gone: its requests got no answer, so their clients retry
                self.closed = True
                return

    def _read(self) -> None:
        stream = self.sock.makefile("rb", buffering=1 << 20)
        try:
            while True:
                head = stream.read(4)
                if len(head) < 4:
                    break
                (n,) = _LEN.unpack(head)
                body = stream.read(n)
                if len(body) < n:
                    break
                rid, op, args = pickle.loads(body)
                try:
                    self.pool.handle(self, rid, op, args)
                except Exception as exc:  # noqa: BLE001 - answered to the collector, never fatal here
                    log.exception("collector request %s failed", op)
                    self.send((rid, False, _public_error(exc)))
        except OSError:
            pass
        except Exception:  # noqa: BLE001 - a message that cannot be read: this collector is restarted
            log.exception("collector %s sent what the server cannot read", self.link.index)
        finally:
            stream.close()
            self.closed = True
            self._answers.put(None)
            self.pool.lost(self)

    def stop(self, timeout: float) -> None:
        """Stop the process (uvicorn stops accepting and finishes the requests it holds) and close."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for t in (self._reader, self._sender):
            if t is not threading.current_thread():
                t.join(timeout=10)
        self.sock.close()


class _Link:
    """A collector slot: the process running in it now (``conn``), replaced when it dies."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: _Conn | None = None
        self.failures = 0  # restarts in a row that did not last: the back-off grows with them
        self.started_at = 0.0

    @property
    def running(self) -> bool:
        return self.conn is not None and self.conn.running


def _public_error(exc: BaseException) -> BaseException:
    """What a collector may re-raise: Goldkey's own errors that survive pickling as they are (the
    tracking API answers them: 4xx, 503 with Retry-After); anything else as the 503 the server's own
    tracking API gives."""
    from goldkey.api.tracking import not_stored
    from goldkey.core.errors import GoldkeyError, InvalidInput, Overloaded, StoreUnavailable, Unauthorized

    if isinstance(exc, (InvalidInput, Overloaded, StoreUnavailable, Unauthorized)):
        return exc
    if isinstance(exc, GoldkeyError):
        return StoreUnavailable(str(exc)[:500])
    return not_stored(exc)


class CollectorPool:
    """Starts ``settings.collectors`` collector processes and answers them (see the module's
    docstring). ``start`` after the runtime is open, ``stop`` before it closes."""

    def __init__(self, gk: Any, settings: Any) -> None:
        self.gk, self.settings = gk, settings
        self.links = [_Link(i) for i in range(settings.collectors)]
        self._lock = threading.Lock()  # starting, restarting and stopping collectors
        self._stopping = False
        self._wake = threading.Event()
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="goldkey-collector-io")
        self._watcher: threading.Thread | None = None
        self._tokens = itertools.count(1)
        self._forgotten: dict[int, list[threading.Event]] = {}  # revocations waiting for the collectors

    def start(self) -> CollectorPool:
        _check_port(self.settings.host, self.settings.collect_port)
        try:
            with self._lock:
                for link in self.links:
                    self._start(link)
        except BaseException:
            self.stop(timeout=5)  # the ones already started
            raise
        # a revoked write key is refused by the collectors from their next request too
        self.gk.workspaces.on_forget.append(self._forget)
        self._watcher = threading.Thread(target=self._watch, name="goldkey-collector-restarts", daemon=True)
        self._watcher.start()
        return self

    def _start(self, link: _Link) -> None:
        link.started_at = time.monotonic()
        link.conn = _Conn(self, link)

    @property
    def running(self) -> int:
        return sum(1 for link in self.links if link.running)

    def _forget(self, key_hash: str) -> None:
        """Tell every running collector to drop a revoked key from its cache, and wait (a little)
        until each has: the revocation's answer then means the key is refused everywhere."""
        conns = [link.conn for link in self.links if link.conn is not None and link.conn.running]
        if not conns:
            return
        token = next(self._tokens)
        done = self._forgotten[token] = [threading.Event() for _ in conns]
        for i, conn in enumerate(conns):
            conn.send((0, None, ("forget", (key_hash, token, i))))
        for ev in done:
            ev.wait(FORGET_WAIT_SECONDS)
        self._forgotten.pop(token, None)

    def handle(self, conn: _Conn, rid: int, op: str, args: Any) -> None:
        """One message of a collector, on its connection's reading thread."""
        from goldkey.ops.metrics import METRICS

        if op == "events":
            ws, rows, ipc = args
            events = [_EVENT(*r) for r in rows]
            try:
                fut = self.gk.writer.submit_events(ws, events, columns=None if ipc is None else _read_table(ipc))
            except Exception as exc:  # noqa: BLE001 - Overloaded: the collector answers 503
                conn.send((rid, False, _public_error(exc)))
                return
            fut.add_done_callback(partial(conn.answer_commit, rid))
        elif op == "quarantine":
            # off this thread: the insert waits for SQLite's write lock, the collector's events must not
            self._io.submit(self._quarantine, conn, rid, args)
        elif op == "ready":
            conn.ready = True
        elif op == "forgot":
            token, i = args
            waiting = self._forgotten.get(token)
            if waiting is not None:
                waiting[i].set()
        elif op == "stats":
            received, rejected = args
            METRICS.events_received.inc(received)
            METRICS.events_rejected.inc(rejected)
        else:
            raise ValueError(f"unknown collector message {op!r}")

    def _quarantine(self, conn: _Conn, rid: int, rows: list[dict[str, Any]]) -> None:
        from goldkey.api.tracking import insert_quarantine

        try:
            insert_quarantine(self.gk.engine, rows)
        except Exception as exc:  # noqa: BLE001 - the collector answers 503: the retry's events are duplicates then
            log.exception("quarantine insert for a collector failed")
            from goldkey.api.tracking import not_quarantined

            conn.send((rid, False, not_quarantined(exc)))  # the same answer as the server's own
            return
        conn.send((rid, True, None))

    def lost(self, conn: _Conn) -> None:
        """A collector's socket closed: the watcher starts it again unless the server is stopping."""
        if not self._stopping:
            log.warning("collector %s exited (code %s); starting it again", conn.link.index, conn.proc.poll())
            self._wake.set()

    def _watch(self) -> None:
        """Start dead collectors again: after a second, longer (up to a minute) when they keep dying
        within a minute of their start."""
        while not self._stopping:
            self._wake.wait(RESTART_DELAY_SECONDS)
            self._wake.clear()
            now = time.monotonic()
            for link in self.links:
                with self._lock:
                    if self._stopping or (link.conn is not None and link.conn.alive):
                        continue  # running, or still starting
                    if now - link.started_at < 60:
                        delay = min(60.0, RESTART_DELAY_SECONDS * 2 ** link.failures)
                        if now - link.started_at < delay:
                            continue
                        link.failures += 1
                    else:
                        link.failures = 0
                    old, link.conn = link.conn, None
                    try:
                        if old is not None:
                            old.stop(timeout=1)
                        self._start(link)
                    except Exception:  # noqa: BLE001 - tried again later; the server's own port still takes tracking
                        log.exception("collector %s could not be started again", link.index)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        try:
            self.gk.workspaces.on_forget.remove(self._forget)
        except ValueError:
            pass
        conns = [link.conn for link in self.links if link.conn is not None]
        for conn in conns:
            if conn.proc.poll() is None:
                conn.proc.terminate()
        for conn in conns:
            conn.stop(timeout)
        self._io.shutdown(wait=True)


def _address(host: str, port: int) -> tuple[int, Any]:
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, addr


def _listener(host: str, port: int) -> socket.socket:
    """A collector's listening socket: every collector binds the port (``SO_REUSEPORT``)."""
    family, addr = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    sock.listen(2048)
    return sock


def _check_port(host: str, port: int) -> None:
    """Fail at start-up, naming the setting, when the port is taken — also by another Goldkey's
    collectors (the probe binds without ``SO_REUSEPORT``, so it does not join their group)."""
    family, addr = _address(host, port)
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
    except OSError as exc:
        raise OSError(f"collectors cannot listen on {host}:{port} (setting collect_port): {exc}") from exc
    finally:
        probe.close()


# ------------------------------------------------------------------------- the collector's side
class RelayClient:
    """A collector's end of its socket pair: calls answered by the server, many in flight."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self.on_notice: Callable[[str, Any], None] | None = None  # messages the server sends unasked

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock, limit=1 << 22)
        asyncio.get_running_loop().create_task(self._read(reader))

    async def call(self, op: str, args: Any) -> Any:
        assert self._writer is not None
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._writer.write(_frame((rid, op, args)))
            await self._writer.drain()
            return await fut
        finally:  # answered, or given up on (the request's timeout): forgotten either way
            self._pending.pop(rid, None)

    def tell(self, op: str, args: Any) -> None:
        """A message without an answer."""
        if self._writer is not None:
            self._writer.write(_frame((0, op, args)))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                rid, ok, value = pickle.loads(await reader.readexactly(_LEN.unpack(head)[0]))
                if rid == 0:  # a notice: (what, argument)
                    if self.on_notice is not None:
                        self.on_notice(*value)
                    continue
                fut = self._pending.get(rid)
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            return
        except (asyncio.IncompleteReadError, OSError):
            log.warning("the server closed the collector's socket; exiting")
        except BaseException:  # noqa: BLE001 - an answer that cannot be read: never serve on without answers
            log.exception("the collector cannot read the server's answers; exiting")
        # the server is gone (or cannot be understood): nothing more can be acknowledged, and the port
        # must be free for its restart (requests in flight get no answer, so their clients retry)
        os._exit(0)

    async def close(self) -> None:
        """Flush what was told (the last counts) before the process ends."""
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer.drain(), 5)
            except (OSError, TimeoutError):
                pass


class _RemoteWriter:
    """What ``goldkey.api.tracking.handle`` needs of the writer, answered by the server."""

    def __init__(self, client: RelayClient) -> None:
        self.client = client

    def submit_events_async(self, workspace_id: str, events: list[Any], loop: asyncio.AbstractEventLoop) -> Any:
        return loop.create_task(self._submit(workspace_id, events))

    async def _submit(self, workspace_id: str, events: list[Any]) -> Any:
        from goldkey.collect.writer import IngestResult, event_table

        # a batch's event-log columns are built here, on the collector's core, not by the server's
        # writer; a small request's are not (a table and its IPC have fixed costs, and DuckDB takes
        # one table of many rows faster than many tables of one): the writer builds those together
        columns = (_write_table(event_table([(workspace_id, "tracking", e) for e in events]))
                   if len(events) >= PREBUILD_MIN_EVENTS else None)
        accepted, duplicates = await self.client.call("events", (workspace_id, [_fields(e) for e in events], columns))
        return IngestResult(accepted, duplicates)


class _Remote:
    """The collector's stand-in for the runtime (``Goldkey``) that the tracking API's ``handle``
    reads: settings, the write keys (the operational store, read only), the writer (the server)
    and the quarantine (the server)."""

    def __init__(self, settings: Any, client: RelayClient) -> None:
        from goldkey.govern.workspaces import WorkspaceService
        from goldkey.store.operational import create_operational_engine

        self.settings = settings
        self.engine = create_operational_engine(settings.resolved_operational_url())
        self.workspaces = WorkspaceService(self.engine)
        self.writer = _RemoteWriter(client)
        self.client = client
        client.on_notice = self._notice

    def _notice(self, what: str, arg: Any) -> None:
        if what == "forget":  # a write key revoked on the server: refused from the next request
            key_hash, token, i = arg
            self.workspaces.forget(key_hash)
            self.client.tell("forgot", (token, i))

    async def quarantine_async(self, rows: list[dict[str, Any]]) -> None:
        await self.client.call("quarantine", rows)


def collector_app(remote: _Remote) -> Any:
    """The collector's ASGI app: the server's tracking fast path, ``/healthz``, and a 404 naming
    the API's port for anything else."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from goldkey.api.tracking import TrackingFastPath
    from goldkey.ops.metrics import METRICS

    settings = remote.settings

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "role": "collector", "pid": os.getpid()})

    async def elsewhere(request: Request) -> JSONResponse:
        return JSONResponse({"error": f"this port ({settings.collect_port}) takes only the tracking API "
                                      f"(POST /v1/track, /v1/batch, ...); the REST API and the console are on "
                                      f"port {settings.port}", "code": "NotFound"}, status_code=404)

    sent = [0.0, 0.0]

    def report_stats() -> None:
        now = (METRICS.registry.get_sample_value("goldkey_events_received_total") or 0.0,
               METRICS.registry.get_sample_value("goldkey_events_rejected_total") or 0.0)
        if now != tuple(sent):
            remote.client.tell("stats", (now[0] - sent[0], now[1] - sent[1]))
            sent[:] = now

    async def report_every_second() -> None:
        while True:
            await asyncio.sleep(STATS_SECONDS)
            report_stats()

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        await remote.client.start()
        remote.client.tell("ready", os.getpid())  # its socket listens already (bound before uvicorn starts)
        task = asyncio.get_running_loop().create_task(report_every_second())
        try:
            yield
        finally:  # uvicorn finished the requests it held: the last counts go before the process ends
            task.cancel()
            report_stats()
            await remote.client.close()

    app = Starlette(routes=[Route("/healthz", healthz),
                            Route("/{path:path}", elsewhere,
                                  methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])],
                    lifespan=lifespan)
    app.state.gk = remote
    app.add_middleware(TrackingFastPath)
    return app


def _child(fd: int, index: int) -> None:
    import uvicorn

    from goldkey.ops.tuning import tune_gc
    from goldkey.settings import Settings

    settings = Settings.model_validate_json(os.environ["GOLDKEY_COLLECTOR_SETTINGS"])
    client = RelayClient(socket.socket(fileno=fd))
    app = collector_app(_Remote(settings, client))
    sock = _listener(settings.host, settings.collect_port)
    tune_gc()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=STOP_TIMEOUT_SECONDS)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s goldkey-collector-{sys.argv[2]} %(levelname)s %(message)s")
    _child(int(sys.argv[1]), int(sys.argv[2]))
