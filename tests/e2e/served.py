"""A real ``goldkey serve`` process on a fresh data directory, for the end-to-end tests (optionally
with collector processes, whose port then takes the tracking calls: ``ingest_url``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
GOLDKEY = str(BIN / "goldkey")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    data_dir: Path
    port: int
    workspace_id: str
    write_key: str
    admin_token: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    collectors: int = 0  # with collector processes, tracking calls go to their port
    collect_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.collect_port or self.port}"

    def start(self) -> float:
        """Start and wait until healthy (and every collector listens); return the seconds it took."""
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        extra = ["--collectors", str(self.collectors), "--collect-port", str(self.collect_port)] if self.collectors \
            else []
        with self.log.open("ab") as log:
            log.write(f"\n--- start at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    GOLDKEY,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = t0 + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                health = httpx.get(self.url + "/healthz", timeout=1)
                if health.status_code == 200 and (
                    not self.collectors
                    or (health.json()["collectors"]["running"] == self.collectors
                        and httpx.get(self.ingest_url + "/healthz", timeout=1).status_code == 200)
                ):
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not become healthy:\n{self.log.read_text()}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: the writer drains and DuckDB checkpoints)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("server did not stop within 30 s of SIGTERM") from None

    def admin_get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(
            self.url + path,
            params=params,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )

    def lookup(self, **params: str) -> dict[str, Any]:
        r = self.admin_get("/api/v1/profiles/lookup", **params)
        assert r.status_code == 200, (params, r.status_code, r.text)
        return r.json()  # type: ignore[no-any-return]


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` now: each of its threads lists the children it started
    (threads and children come and go while they are read)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def served(tmp_path: Path, name: str, collectors: int = 0, *, cls: type[Server] = Server,
           start: bool = True) -> Iterator[Server]:
    """A workspace ``name`` created by the CLI, then the server (a ``cls``) started unless not
    ``start`` (fixtures yield from this); killed at the end if still running."""
    data = tmp_path / "data"
    out = subprocess.run(
        [GOLDKEY, "workspace", "create", name, "--json", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ws = json.loads(out.stdout)
    srv = cls(data, _free_port(), ws["workspace_id"], ws["write_key"], ws["admin_token"], tmp_path / "server.log",
              collectors=collectors, collect_port=_free_port() if collectors else None)
    if start:
        srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(timeout=10)
