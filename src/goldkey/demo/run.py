"""`goldkey demo`: generate the demo market, load it through the real ingestion paths (the
importers and the tracking API over HTTP), and serve the API on the embedded default."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from rich.console import Console
from rich.progress import Progress

from goldkey.app import create_app
from goldkey.demo.audience import define_audience
from goldkey.progress import progress_bar
from goldkey.runtime import Goldkey
from goldkey.settings import Settings

BATCH_EVENTS = 200
WINDOW_EVENTS = 500_000


@dataclass
class BrandCredentials:
    """What the demo prints for each brand."""

    brand: str
    name: str
    workspace_id: str
    write_key: str
    admin_token: str


@dataclass
class DemoResult:
    """Figures of one demo run (used by the demo test)."""

    url: str
    brands: list[BrandCredentials]
    events_sent: int
    events_accepted: int
    events_duplicate: int
    events_rejected: int
    imports: list[dict[str, Any]]
    seconds_generate: float
    seconds_load: float
    audience: dict[str, Any] = field(default_factory=dict)
    seconds_audience: float = 0.0
    loop: Any = None  # goldkey.demo.loop.LoopResult
    seconds_loop: float = 0.0
    demo_user: tuple[str, str] | None = None  # (e-mail, password) of the console's demo user


class BackgroundServer:
    """uvicorn in a thread of this process (DuckDB allows one process per file)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="goldkey-http", daemon=True)

    def start(self) -> str:
        """Start serving; return the base URL once the socket listens."""
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the HTTP server failed to start (is the port in use?)")
            time.sleep(0.05)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _market(settings: Settings, customers: int, events: int, seed: int, console: Console,
            start: dt.date | None = None) -> Any:
    """The demo market of the data directory, generated when there is none of this size and seed.

    Its history ends today unless ``start`` is given: a market that ended months ago shows nobody
    active, and models trained "as of now" (lifecycle, churn) would see only lapsed customers. A market
    already generated in the data directory is reused whatever day it was made on (its events are
    loaded already), unless ``start`` asks for another."""
    from goldkey.demo.market import MarketConfig, MarketManifest, generate

    days = MarketConfig().days
    cfg = MarketConfig(seed=seed, customers=customers, events=events,
                       start=start or dt.date.today() - dt.timedelta(days=days), days=days)
    out = settings.data_dir / "demo-market"
    if (out / "manifest.json").exists():
        try:
            manifest = MarketManifest.load(out)
            have = manifest.config
            if have == cfg or (start is None and (have.seed, have.customers, have.events, have.days)
                               == (cfg.seed, cfg.customers, cfg.events, cfg.days)):
                return manifest
        except Exception:  # noqa: BLE001 - regenerate a stale or partial market
            pass
    with progress_bar(console, "generating demo market") as bar:
        task = bar.add_task("gen", total=events)
        return generate(out, cfg, progress=lambda n: bar.update(task, completed=n))


def _credentials(gk: Goldkey, brand: str, name: str) -> BrandCredentials:
    ws_id = gk.workspaces.find_by_name(name)
    if ws_id is None:
        ws = gk.workspaces.create(name)
        return BrandCredentials(brand, name, ws.workspace_id, ws.write_key, ws.admin_token)
    # secrets are stored hashed: a re-run issues fresh ones
    return BrandCredentials(
        brand,
        name,
        ws_id,
        gk.workspaces.create_key(ws_id, "write", "demo"),
        gk.workspaces.create_key(ws_id, "admin", "demo"),
    )


DEMO_USER = "demo@goldkey.local"


def _demo_user(gk: Goldkey, brands: list[BrandCredentials]) -> tuple[str, str]:
    """One user, admin of every demo workspace; return (e-mail, password). Passwords are stored
    hashed: a re-run sets a fresh one."""
    from goldkey.api.deps import user_service
    from goldkey.govern.users import new_password

    svc, password = user_service(gk), new_password()
    user = svc.find(DEMO_USER)
    if user is None:
        user = svc.create_user(DEMO_USER, password, "Demo")
    else:
        svc.set_password(user["user_id"], password)
    for b in brands:
        svc.grant(b.workspace_id, user["user_id"], "admin", actor="demo")
    return DEMO_USER, password


def _send_events(
    url: str,
    creds: BrandCredentials,
    files: list[Path],
    bar: Progress,
    task: Any,
    counts: dict[str, int],
    lock: threading.Lock,
) -> None:
    auth = "Basic " + base64.b64encode(f"{creds.write_key}:".encode()).decode()

    def batches() -> Any:
        # An SDK sends one device's queue per batch. The generated files are in time order
        # across all customers, so each window of the stream is regrouped by device (each
        # device's events stay in order) before it is sent, as the customers' SDKs would have.
        window: dict[bytes, list[bytes]] = {}
        in_window = 0

        def flush() -> Any:
            chunk: list[bytes] = []
            size = 0
            for lines in window.values():  # each device's events stay together and in order
                for line in lines:
                    if chunk and (len(chunk) >= BATCH_EVENTS or size + len(line) > 450_000):
                        yield chunk
                        chunk, size = [], 0
                    chunk.append(line)
                    size += len(line) + 1
            if chunk:
                yield chunk
            window.clear()

        for f in files:
            with f.open("rb") as fh:
                for line in fh:
                    line = line.rstrip(b"\n")
                    if not line:
                        continue
                    ev = orjson.loads(line)
                    device = str(ev.get("anonymousId") or ev.get("userId") or "").encode()
                    window.setdefault(device, []).append(line)
                    in_window += 1
                    if in_window >= WINDOW_EVENTS:
                        yield from flush()
                        in_window = 0
        yield from flush()

    def post(client: httpx.Client, chunk: list[bytes]) -> None:
        body = b'{"batch":[' + b",".join(chunk) + b"]}"
        for attempt in range(30):
            r = client.post(
                url + "/v1/batch", content=body, headers={"Authorization": auth, "Content-Type": "application/json"}
            )
            if r.status_code == 503:
                time.sleep(float(r.headers.get("Retry-After", "1")) * (1 + attempt / 10))
                continue
            r.raise_for_status()
            ack = orjson.loads(r.content)
            with lock:
                counts["sent"] += len(chunk)
                counts["accepted"] += ack["accepted"]
                counts["duplicates"] += ack["duplicates"]
                counts["rejected"] += len(ack["rejected"])
            bar.update(task, advance=len(chunk))
            return
        raise RuntimeError("the server stayed overloaded")

    local = threading.local()

    def client() -> httpx.Client:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = httpx.Client(timeout=120)
        return c

    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = []
        for chunk in batches():
            pending.append(pool.submit(lambda ch=chunk: post(client(), ch)))
            if len(pending) > 32:
                pending.pop(0).result()
        for p in pending:
            p.result()


def run_demo(
    settings: Settings,
    *,
    customers: int,
    events: int,
    seed: int,
    serve_forever: bool,
    console: Console,
    start: dt.date | None = None,
) -> DemoResult:
    """Run the demo; when ``serve_forever`` is False, stop serving after loading and return figures.
    ``start``: the first day of the market's history (default: so that it ends today)."""
    t0 = time.perf_counter()
    manifest = _market(settings, customers, events, seed, console, start)
    t_gen = time.perf_counter() - t0
    gk = Goldkey.open(settings)
    server = BackgroundServer(create_app(gk=gk), settings.host, settings.port)
    try:
        url = server.start()
        console.print(f"Goldkey API listening on {url}")
        t1 = time.perf_counter()
        brands = [_credentials(gk, b.brand, b.name) for b in manifest.brands]
        demo_user = _demo_user(gk, brands)
        counts = {"sent": 0, "accepted": 0, "duplicates": 0, "rejected": 0}
        lock = threading.Lock()
        import_results: list[dict[str, Any]] = []
        for files, creds in zip(manifest.brands, brands, strict=True):
            before = [i for i in files.imports if i.kind in ("products", "customers")]
            after = [i for i in files.imports if i.kind not in ("products", "customers")]
            for imp in before:
                import_results.append(_import(gk, creds, imp, console))
            total = manifest.counts.get(f"{files.brand}.events", 0) or None
            with progress_bar(console, f"{creds.name}: events via /v1/batch") as bar:
                task = bar.add_task("events", total=total)
                _send_events(url, creds, files.event_files, bar, task, counts, lock)
            for imp in after:
                import_results.append(_import(gk, creds, imp, console))
        t_load = time.perf_counter() - t1
        t2 = time.perf_counter()
        audience = {}
        with progress_bar(console, "traits, tags and segments via the REST API") as bar:
            task = bar.add_task("audience", total=len(brands))
            for creds in brands:
                audience[creds.brand] = define_audience(url, creds.admin_token, creds.brand)
                bar.advance(task)
        t_aud = time.perf_counter() - t2
        t3 = time.perf_counter()
        from goldkey.demo.loop import Loop, print_loop
        from goldkey.demo.market import load_truth

        with console.status("closed loop: campaigns, the trigger, and the market's responses"):
            loop = Loop(gk, url, brands, load_truth(manifest), settings.data_dir / "demo-outbox", seed, console).run()
        t_loop = time.perf_counter() - t3
        result = DemoResult(
            url,
            brands,
            counts["sent"],
            counts["accepted"],
            counts["duplicates"],
            counts["rejected"],
            import_results,
            t_gen,
            t_load,
            audience,
            t_aud,
            loop,
            t_loop,
            demo_user,
        )
        _print_summary(console, gk, result)
        print_loop(console, loop)
        if serve_forever:
            console.print("[bold]Serving.[/bold] Press Ctrl-C to stop.")
            try:
                while server.thread.is_alive():
                    server.thread.join(timeout=1)
            except KeyboardInterrupt:
                pass
        return result
    finally:
        server.stop()
        gk.close()


def _import(gk: Goldkey, creds: BrandCredentials, imp: Any, console: Console) -> dict[str, Any]:
    with progress_bar(console, f"{creds.name}: import {imp.kind} ({imp.path.name}) {{task.description}}") as bar:
        task = bar.add_task("", total=None)
        s = gk.importer.run(
            creds.workspace_id,
            imp.kind,
            imp.path,
            imp.mapping,
            progress=lambda stage, done, total: bar.update(task, description=stage, completed=done, total=total),
        )
    console.print(
        f"  {creds.name}: {imp.kind:<9} read {s.rows_read:>7}  accepted {s.accepted:>7}  "
        f"quarantined {s.quarantined:>4}  duplicates merged {s.duplicates_merged:>4}  ({s.status})"
    )
    out = s.as_dict()
    out["workspace"] = creds.name
    return out


def _print_summary(console: Console, gk: Goldkey, r: DemoResult) -> None:
    import sqlalchemy as sa

    from goldkey.store.operational import merges, profiles

    console.rule("Goldkey demo loaded")
    console.print(
        f"events sent {r.events_sent}, accepted {r.events_accepted}, duplicates {r.events_duplicate}, "
        f"rejected {r.events_rejected}; generated in {r.seconds_generate:.1f}s, loaded in {r.seconds_load:.1f}s"
    )
    for b in r.brands:
        with gk.engine.connect() as conn:
            live = conn.execute(
                sa.select(sa.func.count())
                .select_from(profiles)
                .where(profiles.c.workspace_id == b.workspace_id, profiles.c.merged_into.is_(None))
            ).scalar()
            existing = conn.execute(
                sa.select(sa.func.count())
                .select_from(profiles)
                .where(
                    profiles.c.workspace_id == b.workspace_id,
                    profiles.c.merged_into.is_(None),
                    profiles.c.origin == "existing",
                )
            ).scalar()
            n_merges = conn.execute(
                sa.select(sa.func.count()).select_from(merges).where(merges.c.workspace_id == b.workspace_id)
            ).scalar()
        n_events = gk.analytical.query("SELECT count(*) FROM events WHERE workspace_id = ?", [b.workspace_id])[0][0]
        console.print(f"\n[bold]{b.name}[/bold]  workspace {b.workspace_id}")
        console.print(
            f"  profiles {live} (existing customers {existing}, new {live - existing}), merges {n_merges}, "
            f"events {n_events}"
        )
        aud = r.audience.get(b.brand, {})
        for name, cov in aud.get("tags", {}).items():
            console.print(f"  tag {name}: {cov}")
        if aud.get("rfm"):
            console.print(f"  RFM model v{aud['rfm']['version']}: {aud['rfm']['profiles']} customers scored")
        if aud.get("lifecycle"):
            lc = aud["lifecycle"]
            console.print(f"  lifecycle model v{lc['version']}: " + ", ".join(
                f"{k} {v}" for k, v in (lc.get("stages") or {}).items()))
        for name, seg in aud.get("segments", {}).items():
            console.print(f"  segment {name}: {seg['size']} members ({seg['took_ms']} ms)")
        console.print(f"  write key:   {b.write_key}")
        console.print(f"  admin token: {b.admin_token}")
    if r.demo_user:
        email, password = r.demo_user
        console.print(f"\nconsole sign-in: {email}  password: {password}  (admin of every demo workspace)")
    console.print(f"\nAPI: {r.url}   docs: {r.url}/docs   health: {r.url}/healthz")
    if r.brands:
        console.print(
            f"Try: curl -H 'Authorization: Bearer {r.brands[0].admin_token}' "
            f"'{r.url}/api/v1/profiles/lookup?phone=<a phone from the CRM file>'"
        )
