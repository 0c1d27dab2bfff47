"""Shared fixtures: a real Goldkey instance on real DuckDB and SQLite files in a temp directory."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
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


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    gk = Goldkey.open(open_settings(tmp_path / "data"))
    ws = gk.workspaces.create("Test Brand")
    with TestClient(create_app(gk=gk)) as client:
        yield Env(gk, client, ws)
    gk.close()
