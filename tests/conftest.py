"""Shared fixtures: a real Goldkey instance on real DuckDB and SQLite files in a temp directory."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from goldkey.app import create_app
from goldkey.govern.workspaces import NewWorkspace
from goldkey.runtime import Goldkey
from goldkey.settings import Settings


@dataclass
class Env:
    gk: Goldkey
    client: TestClient
    ws: NewWorkspace

    def write_auth(self, key: str | None = None) -> dict[str, str]:
        token = base64.b64encode(f"{key or self.ws.write_key}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def admin_auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.ws.admin_token}"}

    def post(self, path: str, body: object, key: str | None = None) -> object:
        return self.client.post(path, json=body, headers=self.write_auth(key))


def open_settings(tmp: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp, group_commit_wait_ms=1.0, **kw)  # type: ignore[arg-type]


PG_ADMIN_URL = os.environ.get("GOLDKEY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def operational_url(backend: str) -> Iterator[str | None]:
    """Yield the operational-store URL for ``backend``: None (the SQLite default) or a fresh
    PostgreSQL database that is dropped afterwards. Skips when PostgreSQL truly cannot be reached."""
    if backend == "sqlite":
        yield None
        return
    name = f"goldkey_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.orig}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_env(tmp_path: Path, url: str | None) -> Iterator[Env]:
    gk = Goldkey.open(open_settings(tmp_path / "data", operational_url=url))
    ws = gk.workspaces.create("Test Brand")
    try:
        with TestClient(create_app(gk=gk)) as client:
            yield Env(gk, client, ws)
    finally:
        gk.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A Goldkey instance on the embedded default (SQLite + DuckDB files) with one workspace."""
    yield from make_env(tmp_path, None)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def env_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """The same, once on SQLite and once on PostgreSQL as the operational store."""
    with operational_url(request.param) as url:
        yield from make_env(tmp_path, url)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Schemathesis names each API operation's test ``test_x[POST /v1/track]`` but gives them all
    the function's node id: pytest-xdist tells items apart by node id, and ran one operation of
    twelve. Each gets its name as its node id."""
    for item in items:
        if type(item).__name__ == "SchemathesisFunction" and "[" in item.name and not item.nodeid.endswith("]"):
            params = item.name.split("[", 1)[1].removesuffix("]")
            item._id = item._id.with_params(params)  # pytest 9 builds the id from originalname alone
