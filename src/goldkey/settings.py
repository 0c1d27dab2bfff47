"""Goldkey settings, declared as data: every setting has a name, a default and a help text.

Settings are read from the environment (prefix ``GOLDKEY_``) or given explicitly; nothing here
connects to a store or touches the file system at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All of Goldkey's settings. ``docs/configuration.md`` documents each field (a test checks)."""

    model_config = SettingsConfigDict(env_prefix="GOLDKEY_", extra="ignore")

    data_dir: Path = Field(
        Path("goldkey-data"),
        description="Directory holding the embedded stores (DuckDB and SQLite files) and the server lock.",
    )
    operational_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the operational store. Default: a SQLite file "
        "`operational.sqlite` in the data directory. Use `postgresql+psycopg://...` to scale.",
    )
    analytical_path: Path | None = Field(
        None,
        description="DuckDB file of the analytical store. Default: `analytical.duckdb` in the data directory.",
    )
    channel_files_dir: Path | None = Field(
        None,
        description="Directory under which file channels (`sink`, `call` in file mode) write, each workspace "
        "in a folder of its own (`<dir>/<workspace_id>/`); a channel's `path` is relative to that folder, or an "
        "absolute path inside it. Default: `channel-files` in the data directory.",
    )
    host: str = Field("127.0.0.1", description="Address the API server binds to.")
    port: int = Field(8000, description="Port the API server listens on.")
    collectors: int = Field(
        0, ge=0, le=64,
        description="Collector processes serving the tracking API on `collect_port` in front of the server's "
        "writer (0: none; the server's own port always takes tracking calls). See docs/operations.md.",
    )
    collect_port: int = Field(8001, description="Port the collector processes listen on (with `collectors` > 0).")
    default_phone_region: str = Field(
        "CN", description="Region used to parse phone numbers written without a country code."
    )
    ingest_queue_max_events: int = Field(
        500_000,
        description="Events that may wait for the writer; beyond it the tracking API answers 503 with Retry-After.",
    )
    group_commit_max_events: int = Field(
        50_000, description="Most events written and acknowledged in one group commit."
    )
    group_commit_wait_ms: float = Field(
        2.0, description="How long the writer waits to gather more events into one group commit."
    )
    dedupe_window_hours: int = Field(
        48, description="messageId de-duplication window (Segment documents about 24 hours)."
    )
    max_event_bytes: int = Field(32 * 1024, description="Largest accepted event, as the Segment spec sets (32 KB).")
    max_batch_bytes: int = Field(
        4 * 1024 * 1024,
        description="Largest accepted batch body (decompressed): RudderStack's limit (4 MB), which its SDK fills; "
        "Segment's SDKs stay under Segment's 500 KB.",
    )
    recent_events_per_profile: int = Field(
        20, description="Events kept on each operational profile row for the timeline and real-time rules."
    )
    realtime_interval_seconds: float = Field(
        1.0,
        gt=0,
        description="How often profiles changed by new events are re-evaluated against real-time segments "
        "(segment_entered / segment_exited within about this many seconds).",
    )
    trigger_delivery_process: bool = Field(
        True,
        description="Send real-time triggers' messages from a child process of the server, so rendering and "
        "sending never compete with ingestion and trigger reservations for the server's interpreter "
        "(ignored for an in-memory operational store).",
    )
    segment_refresh_minutes: float = Field(
        60.0,
        ge=0,
        description="Every segment is re-materialised (a size snapshot) when its last compute is older than this; "
        "0 turns the schedule off.",
    )
    refit_check_minutes: float = Field(
        15.0,
        ge=0,
        description="How often the server looks for models due a refit (a definition's refit_every_hours passed "
        "since its latest version) and refits them as of now; 0 turns the schedule off.",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.collectors and self.collect_port == self.port:
            raise ValueError(f"collect_port ({self.collect_port}) must differ from port: the collector processes "
                             "and the API server listen on ports of their own")
        return self

    def resolved_operational_url(self) -> str:
        """Return the operational store URL, defaulting to the SQLite file in the data directory."""
        if self.operational_url:
            return self.operational_url
        return f"sqlite:///{(self.data_dir / 'operational.sqlite').resolve()}"

    def resolved_channel_files_dir(self) -> Path:
        """The directory file channels write under (see ``channel_files_dir``)."""
        return self.channel_files_dir or self.data_dir / "channel-files"

    def resolved_analytical_path(self) -> Path:
        """Return the DuckDB file path, defaulting to the data directory."""
        return self.analytical_path or self.data_dir / "analytical.duckdb"
