"""Shared helpers of the benchmark scripts (not a benchmark itself).

* :class:`Server` starts a real ``goldkey serve`` process on 127.0.0.1 with its own data directory.
* :class:`HttpConn` is a minimal keep-alive HTTP/1.1 client on raw asyncio streams (pre-built
  request bytes in, status and body out), cheap enough that the load generator is not the
  bottleneck; :func:`closed_loop` and :func:`open_loop` drive it from separate processes.
* :class:`EventFactory` builds realistic Segment-style events as byte templates with a user slot
  and a messageId slot, so every request is unique without serialising JSON in the hot loop.
* :func:`pyspy_profile` samples a process with py-spy and summarises where its CPU time goes.

Everything talks to 127.0.0.1 only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
SUMMARY_TAG = "BENCH-SUMMARY-JSON:"

USER_SLOT = b"~U~"  # replaced by the user's 8-digit number
MID_SLOT = b"~M~"  # replaced by a per-request unique messageId prefix


# -- machine and process facts --------------------------------------------------------------------
def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_line() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"machine: {cores()} cores ({model or 'unknown CPU'}), Python {sys.version.split()[0]}; "
        f"server and load generator share these cores"
    )


_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _all_cpu() -> dict[int, tuple[float, str]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                raw = Path(f"/proc/{d}/stat").read_text()
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                f = raw.rsplit(")", 1)[1].split()
                out[int(d)] = ((int(f[11]) + int(f[12])) / _CLK, name)
    return out


def other_load(seconds: float = 1.0) -> str:
    """CPU used by other processes (not this one or its children) over a short interval: other
    work on the machine skews every figure here, so the benchmarks print it."""
    a = _all_cpu()
    time.sleep(seconds)
    b = _all_cpu()
    parent = {}
    for d in b:
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent[d] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
    mine = {os.getpid()}
    for _ in range(5):  # this process's descendants (servers, load generators)
        mine |= {d for d, pp in parent.items() if pp in mine}
    busy = sorted(((b[p][0] - a[p][0], b[p][1], p) for p in b if p in a and p not in mine), reverse=True)
    total = sum(x[0] for x in busy) / seconds
    top = ", ".join(f"{name}[{pid}] {100 * c / seconds:.0f}%" for c, name, pid in busy[:3] if c / seconds >= 0.02)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    msg = f"other processes used {100 * total:.0f}% of one core just before this run (load avg {load:.2f})"
    if total >= 0.15:
        msg = "WARNING: " + msg + f": {top}; figures will be lower than on a quiet machine"
    return msg


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (each thread lists the children it started)."""
    out: list[int] = []
    try:
        for t in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (t / "children").read_text().split()]
    except OSError:
        pass
    return out


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process, by native thread id."""
    out: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                f = Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()
                out[int(t)] = (int(f[11]) + int(f[12])) / _CLK
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native id, from ``py-spy dump`` (empty when py-spy is missing)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {}
    try:
        out = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for line in out.splitlines():
        m = re.match(r'Thread (\d+) \([^)]*\): "([^"]+)"', line.strip())
        if m:
            names[int(m.group(1))] = m.group(2)
    return names


class ThreadCpu:
    """CPU use of a process's threads over an interval, as % of one core, Python threads by name."""

    def __init__(self, pid: int, names: dict[int, str]) -> None:
        self.pid, self.names = pid, names
        self.t0 = time.perf_counter()
        self.c0 = thread_cpu(pid)

    def line(self) -> str:
        wall = time.perf_counter() - self.t0
        c1 = thread_cpu(self.pid)
        if any(tid not in self.names for tid in c1):  # threads started since (e.g. AnyIO workers)
            self.names.update(thread_names(self.pid))
        named: Counter[str] = Counter()
        for tid, c in c1.items():
            d = c - self.c0.get(tid, 0.0)
            name = self.names.get(tid) or ("MainThread" if tid == self.pid else "other (native) threads")
            if name.startswith("AnyIO worker"):
                name = "AnyIO workers"
            named[name] += d
        total = sum(named.values())
        parts = [f"{n} {100 * v / wall:.0f}%" for n, v in named.most_common() if v / wall >= 0.005]
        return f"server CPU {100 * total / wall:.0f}% of one core: " + ", ".join(parts)


def percentiles(values: Sequence[float], ps: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of ``values`` (empty -> NaN)."""
    out: dict[str, float] = {}
    s = sorted(values)
    for p in ps:
        if not s:
            out[f"p{p:g}"] = float("nan")
            continue
        k = max(0, min(len(s) - 1, math.ceil(p * len(s) / 100 - 1e-9) - 1))  # nearest rank: the ceil(pn/100)-th
        out[f"p{p:g}"] = s[k]
    out["max"] = s[-1] if s else float("nan")
    return out


class Clock:
    """Wall and process CPU seconds (all threads: DuckDB's, LightGBM's and the writer's count) since
    the last :meth:`lap`, with the 1-minute load average. On the shared machine a wall figure under
    load is an upper bound; the CPU seconds are the figure to compare between runs."""

    def __init__(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self) -> dict[str, float]:
        """``{"wall_s", "cpu_s", "load1"}`` since the last lap (or the start)."""
        t, c = time.perf_counter(), time.process_time()
        out = {"wall_s": round(t - self.t, 2), "cpu_s": round(c - self.c, 2), "load1": load1()}
        self.t, self.c = t, c
        return out


def wide_profile_texts(recent: int) -> tuple[str, str]:
    """``attributes`` and ``recent_events`` JSON of a bench profile row: empty (``recent`` 0), or a few
    attributes and ``recent`` timeline entries shaped like the tracking path's, so that a profile row
    is as wide as a real one (a real profile keeps its 30 most recent events)."""
    if recent <= 0:
        return "{}", "[]"
    attributes = {"name": "王芳", "city": "广州", "gender": "f", "birthday": "1990-05-17", "member_tier": "silver",
                  "phone_verified": True, "registered_at": "2023-03-08T10:12:00+08:00"}
    events = [{"message_id": f"m-{k:06d}-0123456789abcdef", "ts": f"2025-12-{1 + k % 28:02d}T09:30:00+00:00",
               "type": "track", "event": "Product Viewed",
               "properties": {"sku": f"LENS-{k:04d}", "category": "contact lenses", "price": 129.0}}
              for k in range(recent)]
    return json.dumps(attributes, ensure_ascii=False), json.dumps(events)


def load1() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else float("nan")


def add_laps(laps: Sequence[dict[str, float]]) -> dict[str, float]:
    """The sum of several :meth:`Clock.lap` results (the last one's load)."""
    return {"wall_s": round(sum(x["wall_s"] for x in laps), 2), "cpu_s": round(sum(x["cpu_s"] for x in laps), 2),
            "load1": laps[-1]["load1"] if laps else load1()}


_NOISE: list[str] = []


def check_noise() -> None:
    """Print (and remember for the summary) how busy the machine was with other work."""
    msg = other_load()
    _NOISE.append(msg)
    print(msg, flush=True)


def emit_summary(name: str, rows: list[dict[str, Any]]) -> None:
    """Print the machine-readable summary line that run_all.py collects."""
    print(SUMMARY_TAG + json.dumps({"bench": name, "rows": rows, "noise": _NOISE}, ensure_ascii=False), flush=True)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the benchmark process dies (Linux), so no server
    or load generator outlives a killed benchmark."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def goldkey_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "goldkey"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "goldkey.cli"]


def create_workspace(data_dir: Path, name: str = "bench") -> dict[str, str]:
    out = subprocess.run(
        [*goldkey_cmd(), "workspace", "create", name, "--json", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- the server process ---------------------------------------------------------------------------
class Server:
    """``goldkey serve`` in its own process on 127.0.0.1 (a fresh temp data dir unless given)."""

    def __init__(
        self, data_dir: Path | None = None, env: dict[str, str] | None = None, prelude: str | None = None,
        collectors: int = 0,
    ) -> None:
        self._tmp = None
        # with collectors, the tracking API's load goes to their port (``ingest_port``)
        self.collectors = collectors
        self.collect_port = free_port() if collectors else None
        self.prelude = prelude  # diagnostics: Python run in the server process before the CLI
        if data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="goldkey-bench-")
            data_dir = Path(self._tmp) / "data"
        self.data_dir = data_dir
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.workspace: dict[str, str] = {}
        self.thread_names: dict[int, str] = {}
        self.log_path = (Path(self._tmp) if self._tmp else data_dir.parent) / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ingest_port(self) -> int:
        """Where tracking calls go: the collectors' port when there are collectors."""
        return self.collect_port or self.port

    @property
    def ingest_url(self) -> str:
        return f"http://{HOST}:{self.ingest_port}"

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the server process and of its children (the collectors, the
        delivery child)."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid), sum(cpu_seconds(k) for k in children(self.proc.pid))

    @property
    def write_auth(self) -> str:
        return "Basic " + base64.b64encode((self.workspace["write_key"] + ":").encode()).decode()

    @property
    def admin_auth(self) -> str:
        return "Bearer " + self.workspace["admin_token"]

    def create_workspace(self, name: str = "bench") -> dict[str, str]:
        self.workspace = create_workspace(self.data_dir, name)
        return self.workspace

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, **(self.env or {})}
        if self.collectors:
            env.update(GOLDKEY_COLLECTORS=str(self.collectors), GOLDKEY_COLLECT_PORT=str(self.collect_port))
        log = self.log_path.open("wb")
        cmd = goldkey_cmd()
        if self.prelude:
            cmd = [sys.executable, "-c", f"{self.prelude}\nfrom goldkey.cli import app\napp()"]
        self.proc = subprocess.Popen(
            [*cmd, "serve", "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    ok = r.status == 200
                if ok and self.collectors:  # every collector listening (they bind the port one by one)
                    with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                        ok = json.loads(r.read())["collectors"]["running"] == self.collectors
                    with urllib.request.urlopen(self.ingest_url + "/healthz", timeout=2) as r:
                        ok = ok and r.status == 200
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout}s: {self.log_tail()}")

    def get_json(self, path: str, auth: str | None = None) -> Any:
        req = urllib.request.Request(self.url + path, headers={"Authorization": auth} if auth else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def metrics_text(self) -> str:
        """The server's ``/metrics`` page (Prometheus text format)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            return r.read().decode()  # type: ignore[no-any-return]

    def metric(self, name: str) -> float:
        """Value of one unlabelled Prometheus counter/gauge from /metrics."""
        text = self.metrics_text()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "_total "):
                return float(line.split()[-1])
        return float("nan")

    def stop(self, timeout: float = 120) -> int | None:
        """Stop gracefully (SIGINT: uvicorn drains, the writer finishes, the stores close)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def duckdb_count(data_dir: Path, sql: str = "SELECT count(*) FROM events") -> int:
    """Count rows in the (stopped) server's DuckDB file, opened read-only."""
    import duckdb

    con = duckdb.connect(str(data_dir / "analytical.duckdb"), read_only=True)
    try:
        return int(con.execute(sql).fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


# -- realistic events ----------------------------------------------------------------------------
_TRACK = [
    (
        "Product Viewed",
        lambda r: {
            "product_id": f"SKU-{r.randint(1000, 9999)}",
            "price": round(r.uniform(9, 2999), 2),
            "category": r.choice(["手机", "耳机", "眼镜", "护理液", "充电器"]),
            "currency": "CNY",
        },
    ),
    (
        "Product Added",
        lambda r: {
            "product_id": f"SKU-{r.randint(1000, 9999)}",
            "quantity": r.randint(1, 3),
            "price": round(r.uniform(9, 2999), 2),
            "cart_id": f"c{r.randint(1, 10**6)}",
        },
    ),
    (
        "Order Completed",
        lambda r: {
            "order_id": f"O{r.randint(10**7, 10**8)}",
            "total": round(r.uniform(50, 5000), 2),
            "currency": "CNY",
            "coupon": r.choice(["", "SPRING10", "VIP"]),
        },
    ),
    ("Coupon Claimed", lambda r: {"coupon_id": f"CP{r.randint(100, 999)}", "campaign": "618"}),
    (
        "Search",
        lambda r: {"query": r.choice(["蓝光眼镜", "iPhone 壳", "隐形眼镜", "近视"]), "results": r.randint(0, 80)},
    ),
    ("Video Watched", lambda r: {"video_id": f"v{r.randint(1, 500)}", "seconds": r.randint(3, 600)}),
]
_PAGES = [
    ("首页", "/"),
    ("商品详情", "/p/{n}"),
    ("购物车", "/cart"),
    ("活动页", "/campaign/618"),
    ("会员中心", "/member"),
]
_UA = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4) MicroMessenger/8.0.47",
    "Mozilla/5.0 (Linux; Android 14) Chrome/122.0 Mobile",
    "Mozilla/5.0 (Windows NT 10.0) Chrome/123.0",
]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class EventFactory:
    """Byte templates of Segment-spec events and batches; fill with :meth:`fill`."""

    seed: int = 7
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _ts(self) -> str:
        return (
            f"2025-06-{self.rng.randint(1, 18):02d}T{self.rng.randint(0, 23):02d}:{self.rng.randint(0, 59):02d}:"
            f"{self.rng.randint(0, 59):02d}.{self.rng.randint(0, 999):03d}Z"
        )

    def event(self, i: int, kind: str) -> dict[str, Any]:
        """One event with the user and messageId slots (``~U~`` / ``~M~``)."""
        r = self.rng
        u = USER_SLOT.decode()
        ev: dict[str, Any] = {
            "type": kind,
            "userId": f"u{u}",
            "anonymousId": f"anon-{u}-web",
            "messageId": f"{MID_SLOT.decode()}-{i}",
            "timestamp": self._ts(),
        }
        ctx: dict[str, Any] = {
            "ip": f"113.{r.randint(1, 254)}.{r.randint(1, 254)}.{r.randint(1, 254)}",
            "userAgent": r.choice(_UA),
            "library": {"name": "analytics.js", "version": "4.1.0"},
        }
        if kind == "track":
            name, props = r.choice(_TRACK)
            ev["event"] = name
            ev["properties"] = props(r)
        elif kind == "page":
            title, path = r.choice(_PAGES)
            path = path.format(n=r.randint(1000, 9999))
            ev["name"] = title
            ev["properties"] = {"path": path, "title": title}
        elif kind == "identify":
            ev["traits"] = {
                "phone": f"138{u}",
                "email": f"user{u}@example.com",
                "member_tier": r.choice(["金卡", "银卡", "普通"]),
                "city": r.choice(["广州", "上海", "杭州"]),
            }
        ev["context"] = ctx
        return ev

    def batch_template(self, n_events: int) -> bytes:
        kinds = self.rng.choices(["track", "page", "identify"], weights=[70, 25, 5], k=n_events)
        kinds[0] = "identify"  # an SDK identifies first thing in a session
        events = [self.event(i, k) for i, k in enumerate(kinds)]
        return _dumps({"batch": events, "sentAt": "2025-06-18T12:00:00.000Z"})

    def batch_templates(self, count: int, lo: int = 100, hi: int = 200) -> list[tuple[bytes, int]]:
        return [(self.batch_template(n), n) for n in (self.rng.randint(lo, hi) for _ in range(count))]

    def track_templates(self, count: int) -> list[bytes]:
        return [_dumps(self.event(0, "track")) for _ in range(count)]

    @staticmethod
    def fill(template: bytes, user: int, mid_prefix: str) -> bytes:
        return template.replace(USER_SLOT, b"%08d" % user).replace(MID_SLOT, mid_prefix.encode())


class UserPicker:
    """Half the requests come from a hot set of users, half uniformly from all of them."""

    def __init__(self, users: int, hot: int, seed: int) -> None:
        self.users, self.hot = users, max(1, min(hot, users))
        self.rng = random.Random(seed)

    def __call__(self) -> int:
        r = self.rng.random()
        return self.rng.randrange(self.hot) if r < 0.5 else self.rng.randrange(self.users)


# -- a minimal keep-alive HTTP/1.1 client -------------------------------------------------------
def build_request(method: str, path: str, port: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpConn:
    """One keep-alive connection; ``request`` sends pre-built bytes and returns (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 22)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        low = head.lower()
        i = low.find(b"content-length:")
        if i >= 0:
            j = low.find(b"\r\n", i)
            body = await self.reader.readexactly(int(low[i + 15 : j]))
        else:  # not expected from uvicorn here
            body = b""
        if b"connection: close" in low:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _accepted_of(body: bytes) -> tuple[int, int]:
    try:
        d = json.loads(body)
        return int(d.get("accepted", 0)), int(d.get("duplicates", 0))
    except (ValueError, AttributeError):
        return 0, 0


# A request source: (worker index, request number) -> (raw request bytes, events in it)
Source = Callable[[int, int], tuple[bytes, int]]


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    non200: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    accepted: int = 0
    duplicates: int = 0
    events_sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, from intended send time
    service: list[float] = field(default_factory=list)  # seconds, from actual send time
    late_sends: int = 0  # open loop: sends that left > 10 ms after their slot (all connections busy)
    first_error: str = ""  # the first non-200 answer, to show what went wrong
    generator_cpu: float = 0.0
    unanswered: int = 0  # open loop: requests still unanswered when the run gave up on them

    def merge(self, o: LoadResult) -> None:
        self.requests += o.requests
        self.ok += o.ok
        self.non200.update(o.non200)
        self.errors += o.errors
        self.unanswered += o.unanswered
        self.accepted += o.accepted
        self.duplicates += o.duplicates
        self.events_sent += o.events_sent
        self.seconds = max(self.seconds, o.seconds)
        self.latencies += o.latencies
        self.service += o.service
        self.late_sends += o.late_sends
        self.first_error = self.first_error or o.first_error
        self.generator_cpu += o.generator_cpu


async def _closed_worker(
    port: int, source: Source, wid: int, conns: int, seconds: float, keep_latency: bool, max_requests: int | None = None
) -> LoadResult:
    res = LoadResult()
    counter = [0]
    t0 = time.perf_counter()
    deadline = t0 + seconds
    limit = max_requests or 1 << 62

    async def one_conn() -> None:
        c = HttpConn(port)
        try:
            while time.perf_counter() < deadline and counter[0] < limit:
                counter[0] += 1
                raw, n = source(wid, counter[0])
                res.events_sent += n
                ts = time.perf_counter()
                try:
                    status, body = await c.request(raw)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    res.errors += 1
                    await c.close()
                    continue
                res.requests += 1
                if keep_latency and status == 200:  # the latency of an answer that did the work
                    res.latencies.append(time.perf_counter() - ts)
                if status == 200:
                    res.ok += 1
                    a, d = _accepted_of(body)
                    res.accepted += a
                    res.duplicates += d
                else:
                    res.non200[status] += 1
                    if not res.first_error:
                        res.first_error = f"{status}: {body[:400].decode(errors='replace')}"
        finally:
            await c.close()

    await asyncio.gather(*(one_conn() for _ in range(conns)))
    res.seconds = time.perf_counter() - t0
    return res


def _closed_proc(args: tuple[Any, ...]) -> LoadResult:
    port, source, wid, conns, seconds, keep_latency, max_requests = args
    _use_uvloop()
    c0 = time.process_time()
    res = asyncio.run(_closed_worker(port, source, wid, conns, seconds, keep_latency, max_requests))
    res.generator_cpu = time.process_time() - c0
    return res


def closed_loop(
    port: int,
    source: Source,
    *,
    procs: int,
    conns: int,
    seconds: float,
    keep_latency: bool = True,
    max_requests: int | None = None,
) -> LoadResult:
    """Each of ``procs`` processes keeps ``conns`` connections busy for ``seconds`` (or until it
    sent ``max_requests / procs``); the run ends gracefully (in-flight requests are answered), so
    acknowledged counts are exact."""
    per = max(1, conns // procs)
    per_req = None if max_requests is None else max(1, max_requests // procs)
    ctx = mp.get_context("fork")
    with ctx.Pool(procs) as pool:
        parts = pool.map(_closed_proc, [(port, source, w, per, seconds, keep_latency, per_req) for w in range(procs)])
    total = LoadResult()
    for p in parts:
        total.merge(p)
    return total


async def _open_worker(port: int, source: Source, wid: int, rate: float, seconds: float, conns: int) -> LoadResult:
    """Fixed-rate (open-loop) sender: request i is due at t0 + i/rate whatever happened before;
    latency counts from the due time, so queueing behind slow answers is not hidden."""
    res = LoadResult()
    pool: asyncio.Queue[HttpConn] = asyncio.Queue()
    for _ in range(conns):
        c = HttpConn(port)
        await c.connect()
        pool.put_nowait(c)
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter() + 0.05

    async def fire(i: int, due: float) -> None:
        c = await pool.get()
        raw, n = source(wid, i)
        res.events_sent += n
        ts = time.perf_counter()
        if ts - due > 0.010:
            res.late_sends += 1
        try:
            status, body = await c.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            res.errors += 1
            await c.close()
            pool.put_nowait(c)
            return
        end = time.perf_counter()
        pool.put_nowait(c)
        res.requests += 1
        if status == 200:  # an acknowledgement's latency: a refusal (503, 4xx) acknowledges nothing
            res.latencies.append(end - due)
            res.service.append(end - ts)
            res.ok += 1
            a, d = _accepted_of(body)
            res.accepted += a
            res.duplicates += d
        else:
            res.non200[status] += 1
            if not res.first_error:
                res.first_error = f"{status}: {body[:400].decode(errors='replace')}"

    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.ensure_future(fire(i + 1, due))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
        late = [t for t in tasks if not t.done()]
        res.unanswered = len(late)  # never acknowledged: infinitely late, so the percentiles show them
        res.latencies.extend([float("inf")] * len(late))
        for t in late:
            t.cancel()
    res.seconds = time.perf_counter() - t0
    while not pool.empty():
        await pool.get_nowait().close()
    return res


def _open_proc(args: tuple[Any, ...]) -> LoadResult:
    port, source, wid, rate, seconds, conns = args
    _use_uvloop()
    c0 = time.process_time()
    res = asyncio.run(_open_worker(port, source, wid, rate, seconds, conns))
    res.generator_cpu = time.process_time() - c0
    return res


def open_loop(port: int, source: Source, *, rate: float, seconds: float, conns: int, procs: int = 1) -> LoadResult:
    """Send at a fixed total ``rate`` (requests/s) for ``seconds`` from ``procs`` processes."""
    ctx = mp.get_context("fork")
    with ctx.Pool(procs) as pool:
        parts = pool.map(
            _open_proc, [(port, source, w, rate / procs, seconds, max(1, conns // procs)) for w in range(procs)]
        )
    total = LoadResult()
    for p in parts:
        total.merge(p)
    return total


# -- wrk ----------------------------------------------------------------------------------------
def find_wrk(install: bool) -> str | None:
    """Path of wrk; with ``install`` (only when run by hand) apt-get installs it when missing."""
    path = shutil.which("wrk")
    if path or not install:
        return path
    print("installing wrk with apt-get (--install-wrk) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, timeout=600, stdout=subprocess.DEVNULL)
    return shutil.which("wrk")


def _lua_str(b: bytes) -> str:
    s = b.decode()
    assert "]=====]" not in s
    return "[=====[" + s + "]=====]"


def wrk_script(templates: list[tuple[bytes, int]], users: int, hot: int, headers: dict[str, str]) -> str:
    """A wrk Lua script rotating the templates, filling a user and a unique messageId prefix per
    request, counting acknowledged events from the answers and printing a JSON summary."""
    tpl_lines = []
    for body, n in templates:
        parts: list[str] = []
        for chunk in body.split(MID_SLOT):
            pieces = chunk.split(USER_SLOT)
            for k, p in enumerate(pieces):
                if p:
                    parts.append(_lua_str(p))
                if k < len(pieces) - 1:
                    parts.append("1")
            parts.append("2")
        parts.pop()  # no slot after the last chunk
        tpl_lines.append("{n=" + str(n) + ", " + ", ".join(parts) + "},")
    hdr = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    return f"""-- generated by benchmarks/_common.py
wrk.method = "POST"
{hdr}
local T = {{
{chr(10).join(tpl_lines)}
}}
local NT = #T
local USERS, HOT = {users}, {hot}
local threads = {{}}
local counter, seed, run = 0, 1, "r"
accepted, duplicates, non200, sent_events, acked_events, nreq, tid = 0, 0, 0, 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  run = args[1] or "r"
  seed = 7919 * tid + 17
end

local function rnd()
  seed = (seed * 16807) % 2147483647
  return seed
end

function request()
  counter = counter + 1
  local t = T[(counter % NT) + 1]
  local r = rnd()
  local u
  if r % 2 == 0 then u = math.floor(r / 2) % HOT else u = math.floor(r / 2) % USERS end
  local us = string.format("%08d", u)
  local pfx = run .. "-" .. tid .. "-" .. counter
  local parts = {{}}
  for i = 1, #t do
    local p = t[i]
    if p == 1 then parts[i] = us elseif p == 2 then parts[i] = pfx else parts[i] = p end
  end
  sent_events = sent_events + t.n
  return wrk.format(nil, nil, nil, table.concat(parts))
end

function response(status, headers, body)
  nreq = nreq + 1
  if status == 200 then
    local a = tonumber(string.match(body, '"accepted":(%d+)') or "0")
    local d = tonumber(string.match(body, '"duplicates":(%d+)') or "0")
    accepted = accepted + a
    duplicates = duplicates + d
    acked_events = acked_events + a + d
  else
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local s = {{accepted = 0, duplicates = 0, non200 = 0, sent_events = 0, acked_events = 0, nreq = 0}}
  for _, th in ipairs(threads) do
    for k, _ in pairs(s) do s[k] = s[k] + (th:get(k) or 0) end
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"accepted":%d,"duplicates":%d,' ..
    '"non200":%d,"sent_events":%d,"acked_events":%d,"responses":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, s.accepted, s.duplicates, s.non200, s.sent_events,
    s.acked_events, s.nreq, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def run_wrk(
    wrk: str, url: str, script: str, *, threads: int, conns: int, seconds: float, run_id: str, workdir: Path
) -> tuple[dict[str, Any], float]:
    """Run wrk with the script; return its JSON summary and the CPU seconds wrk used."""
    path = workdir / f"wrk-{run_id}.lua"
    path.write_text(script, encoding="utf-8")
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{conns}",
        f"-d{max(1, int(round(seconds)))}s",
        "--timeout",
        "20s",
        "-s",
        str(path),
        url,
        "--",
        run_id,
    ]
    t0 = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, preexec_fn=die_with_parent)
    t1 = os.times()
    cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:]), cpu
    raise RuntimeError(f"wrk gave no summary: rc={out.returncode}\n{out.stdout}\n{out.stderr}")


# -- profiling the server -----------------------------------------------------------------------
class PySpy:
    """``py-spy record`` of a process in the background (raw collapsed stacks, per thread, idle
    samples included so that waits - fsync, locks, the event loop's poll - show as wall time)."""

    def __init__(self, pid: int, out: Path, seconds: float, rate: int = 97) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.available = Path(exe).exists()
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if self.available:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--rate",
                    str(rate),
                    "--duration",
                    str(int(seconds)),
                    "--threads",
                    "--idle",
                    "--nonblocking",
                    "--full-filenames",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

    def finish(self, timeout: float = 60) -> str:
        if self.proc is None:
            return "py-spy not installed (pip install py-spy into the venv to profile the server)"
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)
        if not self.out.exists():
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            return f"py-spy produced no profile: {err.strip()[:500]}"
        return summarise_collapsed(self.out.read_text(errors="replace"))


def _short(frame: str, line: bool = False) -> str:
    """ "func (/long/path/to/file.py:123)" -> "func (file.py)" (goldkey frames keep their package
    path; with ``line``, the line number too)."""
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    path, _, lineno = loc.rpartition(":")
    if not lineno.isdigit():
        path, lineno = loc, ""
    if "/site-packages/" in path:
        path = path.split("/site-packages/", 1)[1]
    elif "/src/goldkey/" in path:
        path = "goldkey/" + path.split("/src/goldkey/", 1)[1]
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{name} ({path}:{lineno})" if line and lineno else f"{name} ({path})"


def _package(short: str) -> str:
    path = short.split(" (", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    if path.startswith("goldkey/"):
        return path
    if "/" in path:
        return path.split("/", 1)[0]
    return "python stdlib"


_WAITS = {"Condition.wait", "Event.wait", "Runner.run", "_worker", "select", "poll", "WorkerThread.run"}


def summarise_collapsed(text: str, top: int = 12) -> str:
    """Per thread: how much of its wall time it waited, its self time by package (goldkey modules
    by file), goldkey functions by inclusive time and the hottest lines (self time)."""
    threads: dict[str, tuple[Counter[str], Counter[str], list[int]]] = {}
    total = 0
    for line in text.splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack or not n_s.isdigit():
            continue
        n = int(n_s)
        frames = stack.split(";")
        thread = next((f for f in frames[:2] if f.startswith("thread")), "thread ?")
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        incl, self_t, cnt = threads.setdefault(thread, (Counter(), Counter(), [0]))
        cnt[0] += n
        total += n
        seen = set()
        for f in frames:
            s = _short(f)
            if s not in seen:
                incl[s] += n
                seen.add(s)
        if frames:
            self_t[_short(frames[-1], line=True)] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples, wall clock (idle included), per thread:"]
    for thread, (incl, self_t, cnt) in sorted(threads.items(), key=lambda kv: -kv[1][2][0]):
        t = cnt[0]
        waiting = sum(n for f, n in self_t.items() if f.split(" (")[0] in _WAITS)
        if not self_t or ("MainThread" not in thread and "goldkey" not in thread and waiting > 0.95 * t):
            continue  # no Python frames (a native thread), or an idle pool thread
        lines.append(
            f"{thread}: waiting ~{100 * waiting / t:.0f}% (Condition/Event wait, or the event loop's "
            f"poll and its C code), busy ~{100 - 100 * waiting / t:.0f}%"
        )
        by_pkg: Counter[str] = Counter()
        for f, n in self_t.items():
            if f.split(" (")[0] not in _WAITS:
                by_pkg[_package(f)] += n
        lines.append(
            "  self time by package: " + ", ".join(f"{p} {100 * n / t:.1f}%" for p, n in by_pkg.most_common(top))
        )
        ours = [(f, n) for f, n in incl.most_common() if "(goldkey/" in f and n < 0.97 * t][:top]
        lines.append("  goldkey functions, inclusive:")
        lines += [f"    {100 * n / t:5.1f}%  {f}" for f, n in ours]
        lines.append("  hottest lines, self:")
        lines += [f"    {100 * n / t:5.1f}%  {f}" for f, n in self_t.most_common(top)]
    return "\n".join(lines)


# -- request sources (picklable, so worker processes can use them) -------------------------------
class EventSource:
    """POSTs filled event templates: request i of worker w uses template i mod len, a user from
    :class:`UserPicker` and the unique messageId prefix ``{run}-{w}-{i}``."""

    def __init__(
        self, port: int, path: str, auth: str, templates: list[tuple[bytes, int]], users: int, hot: int, run_id: str
    ) -> None:
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: {auth}\r\n"
            f"Content-Type: application/json\r\nUser-Agent: goldkey-bench\r\nContent-Length: "
        ).encode()
        self.templates = templates
        self.users, self.hot, self.run_id = users, hot, run_id
        self._picker: UserPicker | None = None
        self._wid = -1

    def __call__(self, wid: int, i: int) -> tuple[bytes, int]:
        if self._picker is None or wid != self._wid:
            self._wid = wid
            self._picker = UserPicker(self.users, self.hot, seed=zlib.crc32(f"{self.run_id}/{wid}".encode()))
        tpl, n = self.templates[i % len(self.templates)]
        body = EventFactory.fill(tpl, self._picker(), f"{self.run_id}-{wid}-{i}")
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body, n


class GetSource:
    """GETs of random paths from a list (seeded per worker)."""

    def __init__(self, port: int, paths: list[str], auth: str, seed: int = 1) -> None:
        self.port, self.paths, self.auth, self.seed = port, paths, auth, seed
        self._rng: random.Random | None = None

    def __call__(self, wid: int, i: int) -> tuple[bytes, int]:
        if self._rng is None:
            self._rng = random.Random(self.seed * 1000 + wid)
        path = self.paths[self._rng.randrange(len(self.paths))]
        return build_request("GET", path, self.port, {"Authorization": self.auth}), 0
