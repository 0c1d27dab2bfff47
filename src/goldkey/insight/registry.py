"""A small file-based model registry.

Every fitted model is stored under ``<data_dir>/models/<workspace>/<model_name>/v<N>/`` as

- ``artifact.json``: the fitted state (cut points, coefficients ...), JSON only;
- ``meta.json``: ``kind``, ``name``, ``version``, ``definition`` and its ``definition_hash``,
  ``created_at`` and ``metrics``.

Versions only grow; a version directory is written under a temporary name and renamed into place,
so a reader never sees half a version. A run that saves a version and then writes its outputs back
(:func:`one_run_at_a_time`) leaves a ``.run`` marker in the model's directory while it runs: a run
that fails after saving, or a process killed before the write-back finished, retires the version it
saved (renamed ``.interrupted-v<N>-<time>``, kept for inspection, never loaded; its number is not
given again) unless its write-back had begun (:func:`note_writeback`), so the registry never names
a version none of whose outputs the profiles hold (:func:`recover_interrupted_runs` at start-up;
the schedule then finds the model due as it was). ``load`` checks the stored workspace, name, kind and
definition hash against the model asking for it and raises :class:`ModelMismatch` when they differ:
an artifact fitted for one model (or another workspace) never loads into another, even when its
directory was copied there; ``list`` leaves such a copy out.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import AfterValidator, Field

from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])
_SAFE = re.compile(r"^[A-Za-z0-9_\-]{1,100}\Z")
_VERSION_DIR = re.compile(r"^v(\d+)\Z")


class ModelMismatch(Conflict):
    """An artifact was asked to load into a model of another kind or definition."""


def definition_hash(definition: dict[str, Any]) -> str:
    """A stable hash of a model definition (canonical JSON, sorted keys)."""
    raw = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    """One stored version of a model: its metadata and fitted artifact."""

    workspace_id: str
    name: str
    kind: str
    version: int
    definition: dict[str, Any]
    definition_hash: str
    created_at: str
    metrics: dict[str, Any]
    artifact: dict[str, Any]
    path: Path

    def meta(self) -> dict[str, Any]:
        return {"workspace_id": self.workspace_id, "name": self.name, "kind": self.kind, "version": self.version,
                "definition": self.definition, "definition_hash": self.definition_hash,
                "created_at": self.created_at, "metrics": self.metrics}


_DIR_LOCKS: dict[Path, threading.Lock] = {}
_DIR_LOCKS_GUARD = threading.Lock()


def _dir_lock(d: Path) -> threading.Lock:
    key = d.resolve()
    with _DIR_LOCKS_GUARD:
        return _DIR_LOCKS.setdefault(key, threading.Lock())


_RUN_LOCKS: dict[Path, threading.RLock] = {}


def run_lock(root: Path, ws: str, name: str) -> threading.RLock:
    """The process-wide lock one model's runs take from fit to write-back (see :func:`one_run_at_a_time`)."""
    key = (root / ws / name).resolve()
    with _DIR_LOCKS_GUARD:
        return _RUN_LOCKS.setdefault(key, threading.RLock())


_RUN_MARK = ".run"
_RUN_DEPTH: dict[Path, int] = {}
_INTERRUPTED = re.compile(r"^\.interrupted-v(\d+)-")
# the model directories of the runs going on, by workspace (note_writeback marks them)
_ACTIVE: dict[str, set[Path]] = {}
_WRITING: set[Path] = set()  # those of them marked as writing
_ACTIVE_GUARD = threading.Lock()


def note_writeback(ws: str) -> None:
    """Called by the write-back paths (goldkey.insight.writeback, the feedback-text writes) before
    they write a model's outputs: the runs of ``ws`` going on are past saving their version and their
    outputs start to land on profiles, so a failure from here on keeps the version (the profiles
    may hold part of it; the next run replaces it) instead of retiring it. Runs of other models of
    the workspace going on at the same moment are marked too: they then keep their version on a
    failure, as before this marker existed."""
    with _ACTIVE_GUARD:  # one writer of the markers at a time (a run writes scores and reasons on two threads)
        for d in list(_ACTIVE.get(ws, ())):
            if d in _WRITING:
                continue
            mark = d / _RUN_MARK
            try:
                _write_mark(mark, {**orjson.loads(mark.read_bytes()), "writing": True})
            except (OSError, orjson.JSONDecodeError):  # never fails a write-back: the marker only dates it
                log.exception("could not mark the run in %s as writing", d)
            _WRITING.add(d)


def _write_mark(mark: Path, info: dict[str, Any]) -> None:
    tmp = mark.with_name(mark.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(info))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, mark)


def _versions_in(d: Path) -> list[int]:
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _VERSION_DIR.match(p.name)) and p.is_dir())


def _highest_number(d: Path) -> int:
    """The highest version number ever given in ``d``, retired ones included (never given again)."""
    if not d.is_dir():
        return 0
    found = (_VERSION_DIR.match(p.name) or _INTERRUPTED.match(p.name) for p in d.iterdir())
    return max((int(m.group(1)) for m in found if m), default=0)


def _retire(d: Path, keep: set[int]) -> list[int]:
    """Rename the versions of ``d`` not in ``keep`` out of the registry's sight; return them."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    gone = [v for v in _versions_in(d) if v not in keep]
    for v in gone:
        os.rename(d / f"v{v}", d / f".interrupted-v{v}-{stamp}")
    return gone


def _begin_run(d: Path, ws: str | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    _write_mark(d / _RUN_MARK, {"started_at": to_iso(utcnow()), "pid": os.getpid(), "versions": _versions_in(d)})
    if ws is not None:
        with _ACTIVE_GUARD:
            _ACTIVE.setdefault(ws, set()).add(d)


def _end_run(d: Path, ok: bool, ws: str | None = None) -> None:
    if ws is not None:
        with _ACTIVE_GUARD:
            _ACTIVE.get(ws, set()).discard(d)
            _WRITING.discard(d)
    mark = d / _RUN_MARK
    try:
        before = orjson.loads(mark.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return
    if not ok and not before.get("writing"):
        _retire(d, set(before.get("versions", [])))
    mark.unlink(missing_ok=True)


def recover_interrupted_runs(root: Path) -> list[str]:
    """Retire the versions saved by runs that a stopped process left unfinished (a ``.run`` marker
    is still there: the data directory belongs to one process, so at start-up no run is going on).
    Returns ``workspace/model vN`` for each version retired."""
    out: list[str] = []
    if not root.is_dir():
        return out
    for mark in sorted(root.glob(f"*/*/{_RUN_MARK}")):
        d = mark.parent
        try:
            info = orjson.loads(mark.read_bytes())
        except orjson.JSONDecodeError:  # cut off while written: the run had saved nothing yet
            info = {"versions": _versions_in(d)}
        if not info.get("writing"):  # past that, profiles may hold part of it: kept, the next run replaces it
            out += [f"{d.parent.name}/{d.name} v{v}" for v in _retire(d, set(info.get("versions", [])))]
        mark.unlink(missing_ok=True)
    return out


def one_run_at_a_time(name: str | Callable[..., str | None]) -> Callable[[_F], _F]:
    """Decorate a service method ``(self, ws, ...)`` that fits a model, saves a version and writes
    its outputs back: runs of the same model of a workspace go one after another (the schedule's
    refit and a run by hand, two API calls). Without it the older version's write-back could land
    last: profiles holding v1's scores beside v2's reasons while the registry says v2. ``name`` is
    the model name, or a function of the call's arguments giving it (None: the run keeps nothing and
    takes no lock). The data directory belongs to one process, so a lock of the process is enough.
    A run that raises after saving a version, before its write-back began (:func:`note_writeback`),
    retires it, as does the next start after a run a killed process cut off there; past that point
    the version is kept (the profiles may hold part of it) and the next run replaces it."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def inner(self: Any, ws: str, *args: Any, **kwargs: Any) -> Any:
            model = name if isinstance(name, str) else name(self, ws, *args, **kwargs)
            if model is None:  # a run that keeps nothing (an unnamed lookalike audience)
                return fn(self, ws, *args, **kwargs)
            with run_lock(self.registry.root, ws, model):
                d = self.registry._dir(ws, model).resolve()
                depth = _RUN_DEPTH.get(d, 0)
                _RUN_DEPTH[d] = depth + 1
                ok = False
                try:
                    if depth == 0:
                        _begin_run(d, ws)
                    out = fn(self, ws, *args, **kwargs)
                    ok = True
                    return out
                finally:
                    _RUN_DEPTH[d] = depth
                    if depth == 0:
                        del _RUN_DEPTH[d]
                        _end_run(d, ok, ws)

        return inner  # type: ignore[return-value]

    return wrap


RefitEveryHours = Annotated[int | None, Field(ge=1, le=8760, description="the refit schedule: run again as of now "
                                                                           "this often (default: by hand only)")]
"""A definition's ``refit_every_hours`` (:func:`is_due`; goldkey.insight.schedule runs it)."""


# a clock a few minutes ahead of the server's is not "the future"
_AS_OF_SLACK = timedelta(minutes=10)
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)


def _past_instant(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    t = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
    if t < _EARLIEST:
        raise ValueError("must be 1900-01-01 or later")
    if t > datetime.now(UTC) + _AS_OF_SLACK:
        raise ValueError("is in the future: a model learns from what has happened (leave as_of out for now)")
    return v


AsOf = Annotated[datetime | None, AfterValidator(_past_instant)]
"""A model definition's ``as_of``: an instant from 1900 up to now. A later one would fit on a future
nobody has seen (churn labels every customer of a window not yet over as churned) and an earlier one
overflows the date arithmetic of the windows before it."""


def _sane_instant(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    t = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
    if not _EARLIEST <= t < datetime(3000, 1, 1, tzinfo=UTC):
        raise ValueError("must lie between 1900-01-01 and 2999-12-31")
    return v


Instant = Annotated[datetime | None, AfterValidator(_sane_instant)]
"""A report's ``start`` / ``end``: any instant from 1900 to 2999 (the windows around it stay dates)."""


def is_due(created_at: str, every_hours: int | None, now: datetime) -> bool:
    """Whether a version created at ``created_at`` (ISO) is due a refit at ``now`` under a
    definition's ``refit_every_hours`` (None or 0: refitted by hand only)."""
    return bool(every_hours) and datetime.fromisoformat(created_at) + timedelta(hours=every_hours or 0) <= now


class ModelRegistry:
    """Save and load versioned model artifacts under ``root`` (normally ``<data_dir>/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, ws: str, name: str) -> Path:
        for label, v in (("workspace", ws), ("model name", name)):
            if not _SAFE.match(v):
                raise InvalidInput(f"{label} {v!r} must be 1-100 letters, digits, '_' or '-'", field="name")
        return self.root / ws / name

    def versions(self, ws: str, name: str) -> list[int]:
        """The stored versions of a model, ascending."""
        return _versions_in(self._dir(ws, name))

    def save(self, ws: str, name: str, *, kind: str, definition: dict[str, Any], artifact: dict[str, Any],
             metrics: dict[str, Any]) -> ModelVersion:
        """Store a new version (the next number) and return it."""
        d = self._dir(ws, name)
        d.mkdir(parents=True, exist_ok=True)
        created = to_iso(utcnow()) or ""
        opt = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
        # one lock per model directory for the whole process: every request builds its own registry
        with _dir_lock(d):
            tmp = Path(tempfile.mkdtemp(prefix=".v-", dir=d))
            try:
                (tmp / "artifact.json").write_bytes(orjson.dumps(artifact, option=opt))
                while True:
                    version = _highest_number(d) + 1  # a retired version's number is never given again
                    meta = {"workspace_id": ws, "name": name, "kind": kind, "version": version,
                            "definition": definition, "definition_hash": definition_hash(definition),
                            "created_at": created, "metrics": metrics}
                    (tmp / "meta.json").write_bytes(orjson.dumps(meta, option=opt))
                    for f in tmp.iterdir():
                        with open(f, "rb") as fh:
                            os.fsync(fh.fileno())
                    try:
                        os.rename(tmp, d / f"v{version}")
                        break
                    except OSError as exc:  # another writer (process) took the number: take the next
                        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return self.load(ws, name, version, kind=kind, definition=definition)

    def load(self, ws: str, name: str, version: int | None = None, *, kind: str,
             definition: dict[str, Any] | None = None) -> ModelVersion:
        """Load a version (the latest when ``version`` is None) for a model of ``kind`` and, when
        given, ``definition``. Raises NotFound, or ModelMismatch when the artifact belongs to a
        model of another kind or definition."""
        d = self._dir(ws, name)
        if version is None:
            vs = self.versions(ws, name)
            if not vs:
                raise NotFound(f"model {name!r} has no fitted version yet")
            version = vs[-1]
        p = d / f"v{version}"
        try:
            meta = orjson.loads((p / "meta.json").read_bytes())
            artifact = orjson.loads((p / "artifact.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(f"model {name!r} has no version {version}") from None
        if meta.get("workspace_id") != ws or meta.get("name") != name:
            # a version copied or restored into another workspace's or model's directory
            raise ModelMismatch(f"the artifact stored as {ws}/{name} v{version} was fitted as "
                                f"{meta.get('workspace_id')}/{meta.get('name')}; it loads into no other model")
        if meta.get("kind") != kind:
            raise ModelMismatch(f"model {name!r} v{version} is a {meta.get('kind')!r} model; "
                                f"it cannot load into a {kind!r} model")
        if definition is not None and meta.get("definition_hash") != definition_hash(definition):
            raise ModelMismatch(f"model {name!r} v{version} was fitted for another definition "
                                f"({meta.get('definition_hash')}); refit it for this one")
        return ModelVersion(workspace_id=meta["workspace_id"], name=meta["name"], kind=meta["kind"],
                            version=int(meta["version"]), definition=meta["definition"],
                            definition_hash=meta["definition_hash"], created_at=meta["created_at"],
                            metrics=meta.get("metrics", {}), artifact=artifact, path=p)

    def latest_meta(self, ws: str, name: str) -> dict[str, Any] | None:
        """The latest version's metadata of model ``name`` (as :meth:`list` gives it), or None."""
        return next((m for m in self.list(ws) if m["name"] == name), None)

    def kind_of(self, ws: str, name: str) -> str:
        """The stored kind of model ``name``; the name itself when there is none (a load then
        raises NotFound)."""
        meta = self.latest_meta(ws, name)
        return str(meta["kind"]) if meta else name

    def all_versions(self, ws: str, name: str) -> list[dict[str, Any]]:
        """Every stored version's metadata of model ``name``, oldest first ([] when none)."""
        kind = self.kind_of(ws, name)
        return [self.load(ws, name, v, kind=kind).meta() for v in self.versions(ws, name)]

    def list(self, ws: str) -> list[dict[str, Any]]:
        """The latest version's metadata of every model of the workspace."""
        base = self.root / ws
        if not _SAFE.match(ws) or not base.is_dir():
            return []
        out = []
        for d in sorted(base.iterdir()):
            vs = self.versions(ws, d.name) if d.is_dir() and _SAFE.match(d.name) else []
            if vs:
                meta = orjson.loads((d / f"v{vs[-1]}" / "meta.json").read_bytes())
                if meta.get("workspace_id") == ws and meta.get("name") == d.name:  # not another's, copied here
                    out.append(meta)
        return out
