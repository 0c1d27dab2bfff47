"""A child process that sends the real-time triggers' reserved messages.

Why a process: a Goldkey server is one Python process, and its ingestion path (the writer's group
commits) and the real-time trigger worker share one interpreter lock with everything else in it.
Rendering and sending messages is the largest CPU user behind a busy trigger (measured in
``benchmarks/bench_triggers.py``: about as much CPU as the writer itself), and every millisecond it
holds the interpreter is a millisecond an event waits to be committed or a firing to be reserved.
In a process of its own it runs on the other core and the latency path keeps its interpreter.

What runs where:

* the **parent** (the server) reserves messages as before (the latency path ends there); its
  delivery worker claims each round's ``queued`` rows (at most once), re-checks consent and
  suppressions at send time, hands the claimed rows to the child, and with the child's outcomes
  finishes the rows and writes the ``Message Sent`` / ``Message Failed`` events — every write of
  either store stays in the parent, so the child never contends for SQLite's write lock (which
  between processes means sleeping in SQLite's busy handler) and the analytical store keeps its
  one writer process;
* the **child** opens the operational store read-only in practice and runs ``Sender.send_rows``:
  addresses and profile values read, templates rendered, messages sent through the channel with
  its retries and rate limit (the channel's token bucket is a file under the data directory that
  both processes take from, so a campaign sending in the server and triggers sending here keep
  the channel's limit together).

If the child cannot start, or fails before it took a round, the round is sent in the parent's
thread and so are the rounds after it (logged once). If it dies while it holds a round, those
messages' outcome is unknown: they are failed with that reason, never resent (at most once). The
child is started on first use and stopped with the trigger service. An in-memory operational store
(tests) cannot be shared with a child: delivery then stays in-process.

The protocol is ``multiprocessing.connection`` messages over a socket pair (pickled tuples); the
child is ``python -m goldkey.activate.delivery_process FD``.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from goldkey.core.children import child_env

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
ROUND_TIMEOUT_SECONDS = 600.0


class DeliveryProcessError(RuntimeError):
    """The child could not do the round. ``taken``: it had received the round (so some of its
    messages may have been sent) — the caller must not send them again."""

    def __init__(self, message: str, *, taken: bool) -> None:
        super().__init__(message)
        self.taken = taken


class DeliveryProcess:
    """The parent's handle on the delivery child: ``deliver`` sends one round and waits for it."""

    def __init__(self, operational_url: str, data_dir: Path, files_dir: Path | None = None) -> None:
        self.operational_url = operational_url
        self.data_dir = data_dir
        self.files_dir = files_dir or data_dir / "channel-files"
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.failed: str | None = None  # why the child is not used (then the parent delivers itself)

    @staticmethod
    def usable(operational_url: str) -> bool:
        """A child can share the operational store at this URL (not an in-memory SQLite)."""
        if not operational_url.startswith("sqlite"):
            return True
        return ":memory:" not in operational_url and operational_url.rstrip("/") not in ("sqlite:", "sqlite:/")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> Connection:
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "goldkey.activate.delivery_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=child_env(), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send(("open", self.operational_url, str(self.data_dir), str(self.files_dir)))
        if not conn.poll(START_TIMEOUT_SECONDS):
            conn.close()
            raise DeliveryProcessError("the delivery process did not start in time")
        answer = conn.recv()
        if answer[0] != "ready":
            conn.close()
            raise DeliveryProcessError(f"the delivery process could not open the store: {answer[1]}")
        self._conn = conn
        return conn

    def send_rows(self, ws: str, trigger_id: str, template: dict[str, Any], vars: dict[str, Any],
                  rows: Sequence[Any]) -> list[Any]:
        """Render and send claimed rows (``sender.Claimed``) in the child; return their outcomes as
        ``Sender.send_rows`` does. Raises DeliveryProcessError: ``taken`` says whether the child had
        the round (its messages may then have gone out)."""
        with self._lock:
            if self.failed is not None:
                raise DeliveryProcessError(self.failed, taken=False)
            taken = False
            try:
                conn = self._conn or self._start()
                conn.send(("send", ws, trigger_id, template, vars, list(rows)))
                taken = True
                if not conn.poll(ROUND_TIMEOUT_SECONDS):
                    raise DeliveryProcessError("the delivery process did not answer in time", taken=True)
                answer = conn.recv()
            except (OSError, EOFError, DeliveryProcessError) as exc:
                self._give_up(f"delivery process unavailable: {exc!r}")
                raise DeliveryProcessError(self.failed or repr(exc), taken=taken) from exc
        if answer[0] == "error":
            # Sender.send_rows failed in the child as it could have in-process (it returns outcomes
            # for every channel error, so this is a bug or a store error): nothing known was sent
            raise DeliveryProcessError(f"delivery round failed in the delivery process: {answer[1]}", taken=True)
        return answer[1]

    def _give_up(self, why: str) -> None:
        log.warning("%s; trigger messages are delivered in the server process from now on", why)
        self.failed = why
        self._close_locked()

    def close(self, wait_s: float = 10.0) -> None:
        """Stop the child. A delivery round holds the lock while the child sends (a slow channel can
        take minutes); shutdown waits for it ``wait_s`` at most, then stops the child under it: the
        round's messages stay 'sending' and the next start marks them as of unknown outcome, never
        resent (``Sender``), as after a crash."""
        if self._lock.acquire(timeout=wait_s):
            try:
                self._close_locked()
            finally:
                self._lock.release()
            return
        proc = self._proc
        if proc is not None:
            log.warning("a delivery round is still running after %.0f s; stopping the delivery process", wait_s)
            proc.kill()
            proc.wait(timeout=10)

    def _close_locked(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            try:
                conn.send(("stop",))
            except OSError:
                pass
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# ------------------------------------------------------------------------------- the child


def _child(fd: int) -> None:
    import orjson

    from goldkey.activate.channel_store import ChannelStore
    from goldkey.activate.guardrails import Guardrails
    from goldkey.activate.keys import Keys, load_or_create_key
    from goldkey.activate.sender import Sender, rate_limit_dir
    from goldkey.activate.templates import CompiledTemplate, compile_for_workspace
    from goldkey.store.operational import create_operational_engine

    conn = Connection(fd)
    try:
        _, url, data_dir, files_dir = conn.recv()
        engine = create_operational_engine(url)
        keys = Keys(load_or_create_key(Path(data_dir)))
        # no writer: send_rows writes nothing (claims, finishes and events are the parent's); the
        # channels' rate-limit buckets are the server's (shared files), so the two processes' sends
        # together keep each channel's limit
        store = ChannelStore(engine, keys, files_dir=Path(files_dir))  # the same confinement as the server's
        sender = Sender(engine, None, Guardrails(engine), store, keys,  # type: ignore[arg-type]
                        rate_dir=rate_limit_dir(Path(data_dir)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("failed", repr(exc)))
        return
    conn.send(("ready",))
    templates: dict[tuple[str, str, bytes], CompiledTemplate] = {}
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent went away
            break
        if job[0] == "stop":
            break
        _, ws, tid, template, vars, rows = job
        try:
            key = (ws, tid, orjson.dumps(template, option=orjson.OPT_SORT_KEYS))
            tpl = templates.get(key)
            if tpl is None:
                tpl = templates[key] = compile_for_workspace(engine, ws, template)
            conn.send(("ok", sender.send_rows(ws, rows, tpl, vars, {})))
        except Exception as exc:  # noqa: BLE001 - the parent fails the round's messages with the reason
            log.exception("delivery round failed")
            conn.send(("error", repr(exc)))
    sender.close()
    engine.dispose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s goldkey-delivery %(levelname)s %(message)s")
    _child(int(sys.argv[1]))
