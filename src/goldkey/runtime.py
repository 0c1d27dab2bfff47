"""The running Goldkey instance: stores, services and the writer, built from Settings.

``Goldkey.open(settings)`` opens (and migrates) the stores and starts the writer; ``close()``
stops it. The API, the CLI and the tests all work through this one object.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import sqlalchemy as sa

from goldkey.activate.campaigns import CampaignService
from goldkey.activate.journey_engine import JourneyEngine
from goldkey.activate.journeys import JourneyService
from goldkey.activate.receipts import Receipts
from goldkey.activate.sender import Sender
from goldkey.activate.triggers import TriggerService
from goldkey.audience.facts import FactsCache
from goldkey.audience.realtime import RealtimeSegments
from goldkey.audience.segments import SegmentService
from goldkey.audience.tags import TagService
from goldkey.audience.traits import TraitService
from goldkey.collect.importer import Importer
from goldkey.collect.writer import Writer, finish_unmerges, sync_profile_map
from goldkey.core.errors import GoldkeyError
from goldkey.govern.consent import ConsentCollector
from goldkey.govern.workspaces import WorkspaceService
from goldkey.identity.graph import IdentityGraph
from goldkey.insight.registry import recover_interrupted_runs
from goldkey.insight.schedule import RefitScheduler
from goldkey.profiles.service import ProfileService
from goldkey.settings import Settings
from goldkey.store.analytical import AnalyticalStore
from goldkey.store.operational import create_operational_engine, migrate

if TYPE_CHECKING:
    from goldkey.insight.churn import ChurnService
    from goldkey.insight.clusters import ClusterService
    from goldkey.insight.clv import CLVService
    from goldkey.insight.lifecycle import LifecycleService
    from goldkey.insight.rfm import RFMService
    from goldkey.insight.text import FeedbackTextService

_S = TypeVar("_S")

log = logging.getLogger(__name__)


class _OnFirstUse(Generic[_S]):
    """A service built on first access and kept: the insight services import their model
    libraries (lightgbm, scikit-learn, scipy, pandas, jieba: seconds of CPU), which ``goldkey import``,
    ``goldkey serve`` and every test opening a ``Goldkey`` would otherwise pay at start-up even when
    no model is ever trained. Building one has no side effect (no thread, no listener), so building
    it later changes nothing else."""

    def __init__(self, module: str, cls: str) -> None:
        self.module, self.cls = module, cls  # built by ``<module>.<cls>.from_goldkey(gk)``
        self._lock = threading.Lock()

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, gk: Any, owner: type | None = None) -> _S:
        if gk is None:
            return self  # type: ignore[return-value]
        svc = gk.__dict__.get(self.slot)
        if svc is None:
            with self._lock:  # two first requests at once must share one service (its locks, its caches)
                svc = gk.__dict__.get(self.slot)
                if svc is None:
                    factory = getattr(importlib.import_module(self.module), self.cls)
                    svc = gk.__dict__[self.slot] = factory.from_goldkey(gk)
        return svc  # type: ignore[no-any-return]

    def __set__(self, gk: Any, svc: _S) -> None:
        gk.__dict__[self.slot] = svc


class DataDirInUse(GoldkeyError):
    """Another Goldkey process owns this data directory (DuckDB allows one process per file)."""


@dataclass
class Goldkey:
    """Everything one process needs, wired together."""

    settings: Settings
    engine: sa.Engine
    analytical: AnalyticalStore
    workspaces: WorkspaceService
    graph: IdentityGraph
    writer: Writer
    profiles: ProfileService
    importer: Importer
    facts: FactsCache
    segments: SegmentService
    tags: TagService
    traits: TraitService
    realtime: RealtimeSegments
    consent: ConsentCollector | None = None
    sender: Sender | None = None
    receipts: Receipts | None = None
    campaigns: CampaignService | None = None
    triggers: TriggerService | None = None
    journeys: JourneyService | None = None
    journey_engine: JourneyEngine | None = None
    refit: RefitScheduler | None = None
    collectors: Any = None  # collect.collectors.CollectorPool, started by the served app with ``collectors`` > 0
    _lock_file: IO[str] | None = None
    # insight services: built on first use (see _OnFirstUse); class attributes, not dataclass fields
    rfm: ClassVar[_OnFirstUse[RFMService]] = _OnFirstUse("goldkey.insight.rfm", "RFMService")
    clv: ClassVar[_OnFirstUse[CLVService]] = _OnFirstUse("goldkey.insight.clv", "CLVService")
    churn: ClassVar[_OnFirstUse[ChurnService]] = _OnFirstUse("goldkey.insight.churn", "ChurnService")
    lifecycle: ClassVar[_OnFirstUse[LifecycleService]] = _OnFirstUse("goldkey.insight.lifecycle", "LifecycleService")
    clusters: ClassVar[_OnFirstUse[ClusterService]] = _OnFirstUse("goldkey.insight.clusters", "ClusterService")
    feedback_text: ClassVar[_OnFirstUse[FeedbackTextService]] = _OnFirstUse("goldkey.insight.text",
                                                                          "FeedbackTextService")

    @classmethod
    def open(cls, settings: Settings) -> Goldkey:
        """Open the stores under ``settings``, migrate, rebuild derived state and start the writer.

        Raises DataDirInUse when another process holds the data directory.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock(settings.data_dir)
        engine = create_operational_engine(settings.resolved_operational_url())
        migrate(engine)
        analytical = AnalyticalStore(settings.resolved_analytical_path())
        _fail_interrupted_imports(engine, analytical)
        _upgrade_order_summaries(settings.data_dir, engine, analytical)
        for gone in recover_interrupted_runs(settings.data_dir / "models"):
            log.warning("model run cut off before its write-back finished: %s retired (run it again)", gone)
        sync_profile_map(engine, analytical)
        workspaces = WorkspaceService(engine)
        graph = IdentityGraph(workspaces.rules, settings.default_phone_region, settings.recent_events_per_profile)
        writer = Writer(
            engine,
            analytical,
            graph,
            queue_max_events=settings.ingest_queue_max_events,
            batch_max_events=settings.group_commit_max_events,
            wait_ms=settings.group_commit_wait_ms,
            dedupe_hours=settings.dedupe_window_hours,
            recent_keep=settings.recent_events_per_profile,
        )
        writer.start()
        # an undo whose analytical part was cut off (a crash between the two stores) is finished now
        writer.run_command(finish_unmerges)
        # first listener: consent that an identify carries is on record before a trigger on the same commit sends
        consent = ConsentCollector(engine)
        consent.attach(writer)
        facts = FactsCache(engine, analytical)
        facts.attach(writer)
        importer = Importer(engine, writer, settings.default_phone_region)
        importer.listeners.append(lambda ws, _kind: facts.touch(ws))
        segments = SegmentService(engine, analytical, writer, facts)
        realtime = RealtimeSegments(
            segments, interval=settings.realtime_interval_seconds, refresh_minutes=settings.segment_refresh_minutes
        )
        realtime.attach(writer)
        # CRM attributes, consents, orders and feedback an import changed re-enter real-time segments
        importer.profile_listeners.append(realtime.notify)
        realtime.start()
        traits = TraitService(engine, analytical, writer, facts)
        traits.on_applied.append(realtime.notify)
        traits.start()  # the incremental path and the schedule
        gk = cls(
            settings=settings,
            engine=engine,
            analytical=analytical,
            workspaces=workspaces,
            graph=graph,
            writer=writer,
            profiles=ProfileService(engine, settings.default_phone_region),
            importer=importer,
            facts=facts,
            segments=segments,
            tags=TagService(engine, analytical, writer, facts, realtime, settings.default_phone_region),
            traits=traits,
            realtime=realtime,
            _lock_file=lock,
        )
        gk.consent = consent
        gk.sender = Sender.from_goldkey(gk)
        gk.receipts = Receipts(gk.sender)
        gk.campaigns = CampaignService.from_goldkey(gk)
        gk.campaigns.start()
        gk.triggers = TriggerService.from_goldkey(gk)
        gk.triggers.attach(writer)
        gk.triggers.start()
        gk.journeys = JourneyService.from_goldkey(gk)
        gk.journey_engine = JourneyEngine.from_goldkey(gk)
        gk.journey_engine.attach(writer)
        gk.journey_engine.start()
        gk.refit = RefitScheduler(gk, settings.refit_check_minutes * 60)
        gk.refit.start()
        return gk

    def close(self) -> None:
        """Drain the writer, checkpoint and close the stores, release the data directory."""
        if self.refit is not None:
            self.refit.stop()
        self.realtime.stop()
        self.traits.stop()
        for svc in (self.journey_engine, self.triggers, self.campaigns):
            if svc is not None:
                svc.stop()
        if self.sender is not None:
            self.sender.close()
        self.writer.stop()
        self.analytical.close()
        self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _lock(data_dir: Path) -> IO[str]:
    f = open(data_dir / "goldkey.lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise DataDirInUse(
            f"another Goldkey process is using {data_dir}; stop it, or send the work to its API"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _fail_interrupted_imports(engine: sa.Engine, analytical: AnalyticalStore) -> None:
    """An import still 'running' when the process starts was cut off by a crash, so mark it failed
    and let the user run it again (imports are keyed: a second run never duplicates). Its operational
    write is one transaction; an orders import is marked done only after its analytical transaction,
    committed after the operational one, so one cut off between the two is found here too: its
    profiles' order summaries, committed with the operational half, may count orders the analytical
    store never got, so the workspace's summaries are recomputed from the orders it holds."""
    from goldkey.core.clock import utcnow
    from goldkey.store.operational import imports

    with engine.begin() as conn:
        cut = conn.execute(sa.select(imports.c.workspace_id, imports.c.kind)
                           .where(imports.c.status == "running")).all()
        conn.execute(
            imports.update()
            .where(imports.c.status == "running")
            .values(
                status="failed",
                error="interrupted: the process stopped before the import finished",
                finished_at=utcnow(),
            )
        )
    for ws in sorted({r.workspace_id for r in cut if r.kind == "orders"}):
        n = _recompute_order_summaries(engine, analytical, ws)
        log.warning("orders import of %s cut off: %d order summaries recomputed", ws, n)


def _recompute_order_summaries(engine: sa.Engine, analytical: AnalyticalStore, ws: str | None = None) -> int:
    """Recompute the order summaries of the live profiles holding one (of ``ws``, or of every
    workspace) from the orders the analytical store holds; return how many."""
    from types import SimpleNamespace

    from goldkey.collect.importer import refresh_order_summaries
    from goldkey.store.operational import profiles

    ctx = SimpleNamespace(analytical=analytical)
    q = sa.select(profiles.c.workspace_id, profiles.c.profile_id).where(
        profiles.c.merged_into.is_(None), profiles.c.order_summary != "{}")
    if ws is not None:
        q = q.where(profiles.c.workspace_id == ws)
    with engine.begin() as conn:
        by_ws: dict[str, list[str]] = {}
        for w, pid in conn.execute(q):
            by_ws.setdefault(w, []).append(pid)
        for w, ids in sorted(by_ws.items()):
            for i in range(0, len(ids), 50_000):
                refresh_order_summaries(ctx, conn, w, ids[i:i + 50_000])  # type: ignore[arg-type]
    return sum(len(v) for v in by_ws.values())


# order summaries of data directories written before purchases were told from refunds and
# cancellations (and revenue given per currency) are recomputed once, at the first start after
_SUMMARIES_MARK = ".order-summaries-v2"


def _upgrade_order_summaries(data_dir: Path, engine: sa.Engine, analytical: AnalyticalStore) -> None:
    mark = data_dir / _SUMMARIES_MARK
    if mark.exists():
        return
    n = _recompute_order_summaries(engine, analytical)
    if n:
        log.warning("order summaries recomputed once for this version (purchases only): %d profiles", n)
    mark.write_text("order summaries: purchases only, refunds and cancellations counted, revenue per currency\n")
