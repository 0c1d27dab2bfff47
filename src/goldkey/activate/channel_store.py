"""Configured channels of a workspace: saved validated, credentials encrypted and write-only.

``save`` validates the config with the channel class (``Channel.validate_config``: a channel without
its credentials is refused here, naming the missing ``secrets.<name>``), encrypts the secrets with
the installation key (``activate.keys``) and stores them; ``public`` never returns them, only which
secret names are set. ``open`` builds a live channel instance (cached until the config changes).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from goldkey.activate.channels.base import Channel, channel_class
from goldkey.activate.keys import Keys
from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound
from goldkey.core.ids import new_id
from goldkey.store.operational import channels


class ChannelStore:
    """Saves, lists and opens the channels of every workspace."""

    def __init__(self, engine: sa.Engine, keys: Keys, transport: httpx.BaseTransport | None = None,
                 files_dir: Path | None = None) -> None:
        self.engine = engine
        self.keys = keys
        self.transport = transport
        # where file channels may write (Settings.channel_files_dir); None: a store that only opens
        # channels saved by one that has it (the trigger delivery process)
        self.files_dir = files_dir
        self._open: dict[str, tuple[Any, Channel]] = {}
        self._lock = threading.Lock()

    def save(self, ws: str, *, name: str, kind: str, provider: str = "", config: Mapping[str, Any],
             secrets: Mapping[str, str] | None = None, channel_id: str | None = None) -> dict[str, Any]:
        """Create (or, with ``channel_id``, replace) a channel; raise InvalidInput / Conflict.
        When replacing, omitted secrets keep their stored values."""
        if not name.strip() or len(name) > 200:
            raise InvalidInput("name must be 1 to 200 characters", field="name")
        cls = channel_class(kind, provider)
        stored: dict[str, str] = {}
        if channel_id is not None:
            row = self._row(ws, channel_id)
            stored = self.keys.decrypt(row.secrets)
        merged = {**stored, **{k: v for k, v in (secrets or {}).items() if v is not None}}
        parsed = cls.validate_config(config, merged)
        for f in cls.file_fields:
            value = getattr(parsed, f)
            if value is not None and value != "-":
                # kept relative to the workspace's folder: the data directory may move (a restored
                # backup, another mount, a relative data dir from another working directory)
                target = self._confined(ws, cls.kind, f, value)
                parsed = parsed.model_copy(update={f: target.relative_to(self._folder(ws)).as_posix()})
        now = utcnow()
        values = {"workspace_id": ws, "kind": cls.kind, "provider": cls.provider, "name": name.strip(),
                  "config": parsed.model_dump_json(), "secrets": self.keys.encrypt(merged), "status": "active",
                  "updated_at": now}
        try:
            with self.engine.begin() as c:
                if channel_id is None:
                    channel_id = new_id("chn")
                    c.execute(channels.insert().values(channel_id=channel_id, created_at=now, **values))
                else:
                    c.execute(channels.update().where(channels.c.workspace_id == ws,
                                                      channels.c.channel_id == channel_id).values(**values))
        except sa.exc.IntegrityError:
            raise Conflict(f"a channel named {name!r} already exists") from None
        with self._lock:
            self._drop(channel_id)
        return self.get(ws, channel_id)

    def _confined(self, ws: str, kind: str, field: str, value: str) -> Path:
        """The file a channel's ``field`` names, inside the workspace's folder of the channel-files
        directory: a relative path is taken from that folder, an absolute one must lie in it (symbolic
        links resolved). A brand's admin may not write anywhere else on the server: another brand's
        call list, the stores' own files, a crontab (a call list's script is free text)."""
        if self.files_dir is None:
            raise InvalidInput(f"this Goldkey has no channel-files directory: a {kind} channel cannot write a file",
                               field=f"config.{field}")
        base = self._folder(ws)
        try:
            given = Path(value)
            target = (given if given.is_absolute() else base / given).resolve()
        except (ValueError, OSError):  # a NUL byte, a name the file system refuses
            target = base
        if base not in target.parents:
            raise InvalidInput(f"a {kind} channel writes only inside this workspace's folder {base}: give a file "
                               f"name relative to it (e.g. 'out.csv'), not {value!r}", field=f"config.{field}")
        return target

    def _folder(self, ws: str) -> Path:
        assert self.files_dir is not None
        return (self.files_dir / ws).resolve()

    def file_path(self, ws: str, value: str) -> Path:
        """The file a file channel's stored ``path`` names (it is kept relative to the workspace's
        folder of the channel-files directory)."""
        return self._confined(ws, "file", "path", value)

    def _row(self, ws: str, channel_id: str) -> Any:
        with self.engine.connect() as c:
            row = c.execute(sa.select(channels).where(channels.c.workspace_id == ws,
                                                      channels.c.channel_id == channel_id)).first()
        if row is None:
            raise NotFound(f"channel {channel_id!r} not found")
        return row

    def public(self, row: Any) -> dict[str, Any]:
        """A channel as the API shows it: no secret values, only their names."""
        return {"channel_id": row.channel_id, "name": row.name, "kind": row.kind, "provider": row.provider,
                "config": orjson.loads(row.config), "secrets_set": sorted(self.keys.decrypt(row.secrets)),
                "status": row.status, "created_at": to_iso(row.created_at), "updated_at": to_iso(row.updated_at)}

    def get(self, ws: str, channel_id: str) -> dict[str, Any]:
        return self.public(self._row(ws, channel_id))

    def list(self, ws: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(channels).where(channels.c.workspace_id == ws).order_by(channels.c.name)).all()
        return [self.public(r) for r in rows]

    def open(self, ws: str, channel_id: str) -> Channel:
        """The live channel (built once per config version); raise NotFound."""
        row = self._row(ws, channel_id)
        with self._lock:
            hit = self._open.get(channel_id)
            if hit is not None and hit[0] == row.updated_at:
                return hit[1]
            self._drop(channel_id)
            cls = channel_class(row.kind, row.provider)
            secrets = self.keys.decrypt(row.secrets)
            config = cls.validate_config(orjson.loads(row.config), secrets)
            for f in cls.file_fields if self.files_dir is not None else ():
                # the stored path is relative to the workspace's folder (where it is now); one saved
                # outside it, before paths were kept there, is not opened
                value = getattr(config, f)
                if value is not None and value != "-":
                    config = config.model_copy(update={f: str(self._confined(ws, cls.kind, f, value))})
            ch = cls(config, secrets, transport=self.transport)
            self._open[channel_id] = (row.updated_at, ch)
            return ch

    def _drop(self, channel_id: str) -> None:
        old = self._open.pop(channel_id, None)
        if old is not None:
            old[1].close()

    def close(self) -> None:
        with self._lock:
            for cid in list(self._open):
                self._drop(cid)
