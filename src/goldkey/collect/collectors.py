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

Durability and failure: a collector answers 200 only after the server's answer. If the server
dies, every collector sees its socket close and exits at once (requests in flight get no answer,
so SDKs retry them, de-duplicated by ``messageId``); a collector that dies is started again by the
server after a second. Stopping the server stops the collectors first (they finish the requests
they hold), then the writer.

The wire format is a length-prefixed pickle per message (the socket pair is private to the server
and its own children): ``(rid, op, args)`` to the server, ``(rid, ok, value)`` back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 30.0
STATS_SECONDS = 1.0


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=5)
    return _LEN.pack(len(data)) + data


# --------------------------------------------------------------------------- the server's side
class _Link:
    """The server's end of one collector: its process and the thread answering its socket."""

    def __init__(self, pool: CollectorPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            env = {**os.environ, "PYTHONUNBUFFERED": "1",
                   "GOLDKEY_COLLECTOR_SETTINGS": self.pool.settings.model_dump_json()}
            src = str(Path(__file__).resolve().parents[2])  # the package's root, for a source checkout
            env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "goldkey.collect.collectors", str(theirs.fileno()), str(self.index)],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.sock = ours
        self.thread = threading.Thread(target=self._serve, name=f"goldkey-collector-{self.index}", daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _send(self, obj: Any) -> None:
        sock = self.sock
        if sock is None:
            return
        data = _frame(obj)
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError:  # the collector is gone: its requests got no answer, so their clients retry
                pass

    def _serve(self) -> None:
        assert self.sock is not None
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
                    self._send((rid, False, _public_error(exc)))
        except OSError:
            pass
        finally:
            stream.close()
            self.pool.lost(self)

    def _done(self, rid: int, fut: Any) -> None:
        exc = fut.exception()
        if exc is None:
            res = fut.result()
            self._send((rid, True, (res.accepted, res.duplicates)))
        else:
            self._send((rid, False, _public_error(exc)))

    def stop(self, timeout: float) -> None:
        proc, sock = self.proc, self.sock
        if proc is not None and proc.poll() is None:
            proc.terminate()  # uvicorn stops accepting and finishes the requests it holds
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)


def _public_error(exc: BaseException) -> BaseException:
    """What a collector may re-raise: Goldkey's own errors as they are (the tracking API answers
    them: 4xx, 503 with Retry-After); anything else as the 503 the server's own API gives."""
    from goldkey.core.errors import GoldkeyError, StoreUnavailable

    if isinstance(exc, GoldkeyError):
        return exc
    return StoreUnavailable(f"events not stored, retry: {type(exc).__name__}: {exc}"[:500])


class CollectorPool:
    """Starts ``settings.collectors`` collector processes and answers them (see the module's
    docstring). ``start`` after the runtime is open, ``stop`` before it closes."""

    def __init__(self, gk: Any, settings: Any) -> None:
        self.gk, self.settings = gk, settings
        self.links = [_Link(self, i) for i in range(settings.collectors)]
        self._stopping = False

    def start(self) -> CollectorPool:
        _check_port(self.settings.host, self.settings.collect_port)
        for link in self.links:
            link.start()
        return self

    @property
    def running(self) -> int:
        return sum(1 for link in self.links if link.running)

    def handle(self, link: _Link, rid: int, op: str, args: Any) -> None:
        """One message of a collector, on its link's thread."""
        from goldkey.ops.metrics import METRICS

        if op == "events":
            ws, events = args
            try:
                fut = self.gk.writer.submit_events(ws, events)
            except Exception as exc:  # noqa: BLE001 - Overloaded: the collector answers 503
                link._send((rid, False, _public_error(exc)))
                return
            fut.add_done_callback(partial(link._done, rid))
        elif op == "quarantine":
            from goldkey.api.tracking import insert_quarantine

            insert_quarantine(self.gk.engine, args)
            link._send((rid, True, None))
        elif op == "stats":
            received, rejected = args
            METRICS.events_received.inc(received)
            METRICS.events_rejected.inc(rejected)
        else:
            raise ValueError(f"unknown collector message {op!r}")

    def lost(self, link: _Link) -> None:
        """A collector's socket closed: unless the server is stopping, start it again."""
        if self._stopping:
            return
        log.warning("collector %s exited (code %s); starting it again", link.index,
                    link.proc.poll() if link.proc is not None else None)

        def restart() -> None:
            time.sleep(RESTART_DELAY_SECONDS)
            if self._stopping:
                return
            if link.proc is not None and link.proc.poll() is None:
                link.proc.kill()
                link.proc.wait(timeout=10)
            if link.sock is not None:
                link.sock.close()
            try:
                link.start()
            except Exception:  # noqa: BLE001 - logged; the server's own port still takes tracking
                log.exception("collector %s could not be started again", link.index)

        threading.Thread(target=restart, name=f"goldkey-collector-restart-{link.index}", daemon=True).start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        self._stopping = True
        for link in self.links:
            if link.proc is not None and link.proc.poll() is None:
                link.proc.terminate()
        for link in self.links:
            link.stop(timeout)


def _address(host: str, port: int) -> tuple[int, Any]:
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, addr


def _listener(host: str, port: int, *, listen: bool = True) -> socket.socket:
    family, addr = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    if listen:
        sock.listen(2048)
    return sock


def _check_port(host: str, port: int) -> None:
    """Fail at start-up, with the port's name, when the collectors could not bind it."""
    try:
        _listener(host, port, listen=False).close()
    except OSError as exc:
        raise OSError(f"collectors cannot listen on {host}:{port} (setting collect_port): {exc}") from exc


# ------------------------------------------------------------------------- the collector's side
class RelayClient:
    """A collector's end of its socket pair: calls answered by the server, many in flight."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock, limit=1 << 22)
        asyncio.get_running_loop().create_task(self._read(reader))

    async def call(self, op: str, args: Any) -> Any:
        assert self._writer is not None
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._writer.write(_frame((rid, op, args)))
        await self._writer.drain()
        return await fut

    def tell(self, op: str, args: Any) -> None:
        """A message without an answer."""
        if self._writer is not None:
            self._writer.write(_frame((0, op, args)))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                rid, ok, value = pickle.loads(await reader.readexactly(_LEN.unpack(head)[0]))
                fut = self._pending.pop(rid, None)
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        except (asyncio.IncompleteReadError, OSError):
            pass
        # the server is gone: nothing more can be acknowledged, and the port must be free for its
        # restart (requests in flight get no answer, so their clients retry)
        log.warning("the server closed the collector's socket; exiting")
        os._exit(0)


class _RemoteWriter:
    """What ``goldkey.api.tracking.handle`` needs of the writer, answered by the server."""

    def __init__(self, client: RelayClient) -> None:
        self.client = client

    def submit_events_async(self, workspace_id: str, events: list[Any], loop: asyncio.AbstractEventLoop) -> Any:
        return loop.create_task(self._submit(workspace_id, events))

    async def _submit(self, workspace_id: str, events: list[Any]) -> Any:
        from goldkey.collect.writer import IngestResult

        accepted, duplicates = await self.client.call("events", (workspace_id, events))
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

    async def report_stats() -> None:
        sent = (0.0, 0.0)
        while True:
            await asyncio.sleep(STATS_SECONDS)
            now = (METRICS.registry.get_sample_value("goldkey_events_received_total") or 0.0,
                   METRICS.registry.get_sample_value("goldkey_events_rejected_total") or 0.0)
            if now != sent:
                remote.client.tell("stats", (now[0] - sent[0], now[1] - sent[1]))
                sent = now

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        await remote.client.start()
        task = asyncio.get_running_loop().create_task(report_stats())
        try:
            yield
        finally:
            task.cancel()

    app = Starlette(routes=[Route("/healthz", healthz),
                            Route("/{path:path}", elsewhere, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])],
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
