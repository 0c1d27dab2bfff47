"""Fuzzing: whatever a client sends, the API answers 2xx/4xx, never 5xx.

Schemathesis generates requests from the app's own OpenAPI schema (in-process ASGI) for the tracking
endpoints and the profile, quarantine and import read endpoints, with valid credentials injected; a
Hypothesis test then throws arbitrary JSON values, raw bytes and odd event shapes at ``/v1/track`` and
``/v1/batch``, and arbitrary identifier queries at the profile lookup. All of it runs against a real
Goldkey instance (SQLite and DuckDB files, real writer thread).
"""

from __future__ import annotations

import base64
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from goldkey.app import create_app
from goldkey.govern.workspaces import NewWorkspace
from goldkey.runtime import Goldkey
from goldkey.settings import Settings

FUZZ_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


class Instance:
    def __init__(self, root: Path) -> None:
        self.gk = Goldkey.open(Settings(data_dir=root / "data", group_commit_wait_ms=1.0))
        self.ws: NewWorkspace = self.gk.workspaces.create("Fuzz Brand")
        self.app = create_app(gk=self.gk)
        self.write = {"Authorization": "Basic " + base64.b64encode(f"{self.ws.write_key}:".encode()).decode()}
        self.admin = {"Authorization": f"Bearer {self.ws.admin_token}"}

    def headers_for(self, path: str) -> dict[str, str]:
        return self.write if path.startswith("/v1/") else self.admin


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = Instance(tmp_path_factory.mktemp("fuzz"))
    # some data, so that reads have something to find
    with TestClient(inst.app) as c:
        r = c.post(
            "/v1/identify",
            json={"userId": "fuzz-u1", "traits": {"email": "fuzz@example.com", "phone": "13912345678"}},
            headers=inst.write,
        )
        assert r.status_code == 200, r.text
        r = c.post("/v1/batch", json={"batch": [{"type": "track"}]}, headers=inst.write)  # one quarantined
        assert r.status_code == 200, r.text
    try:
        yield inst
    finally:
        inst.gk.close()


class _Proxy:
    """The ASGI app schemathesis talks to: forwards to the module's real instance once it is open.

    The schema is loaded at import time (schemathesis' pytest integration needs it then), from an app
    that has no stores; the real instance is opened and closed by the ``instance`` fixture, so the
    proxy answers the lifespan protocol itself.
    """

    def __init__(self) -> None:
        self.schema_only = create_app(Settings(data_dir=Path("/nonexistent/never-opened")))
        self.target: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await (self.target or self.schema_only)(scope, receive, send)


PROXY = _Proxy()
schema = (
    schemathesis.openapi.from_asgi("/openapi.json", PROXY)
    .include(path_regex=r"^/v1/")
    .include(method="GET", path_regex=r"^/api/v1/(profiles|quarantine|imports)")
)


@pytest.fixture(scope="module")
def proxied(instance: Instance) -> Iterator[Instance]:
    PROXY.target = instance.app
    try:
        yield instance
    finally:
        PROXY.target = None


@schema.parametrize()
@FUZZ_SETTINGS
def test_schemathesis_no_server_error(case: Any, proxied: Instance) -> None:
    case.call_and_validate(headers=proxied.headers_for(case.path), checks=[not_a_server_error])


# -- Hypothesis: arbitrary JSON --------------------------------------------------------------------

_keys = st.one_of(
    st.sampled_from(
        [
            "type",
            "userId",
            "anonymousId",
            "event",
            "properties",
            "traits",
            "context",
            "timestamp",
            "sentAt",
            "originalTimestamp",
            "messageId",
            "previousId",
            "groupId",
            "name",
            "batch",
            "writeKey",
            "user_id",
            "anonymous_id",
            "device",
            "id",
            "email",
            "phone",
            "crmId",
            "wechatOpenId",
            "wechatUnionId",
        ]
    ),
    st.text(max_size=8),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "track",
            "identify",
            "page",
            "screen",
            "group",
            "alias",
            "",
            "2024-01-01T00:00:00Z",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
            "13912345678",
            "a@b.co",
            "unknown",
            "+8613800138000",
        ]
    ),
)
JSON = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=25,
)


def _event_like() -> st.SearchStrategy[dict[str, Any]]:
    """Mostly-valid events with random values in random fields: reaches deeper than pure noise."""
    base = st.fixed_dictionaries(
        {"userId": st.one_of(st.text(min_size=1, max_size=10), st.integers(), JSON)},
        optional={
            "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]) | JSON,
            "event": st.text(max_size=10) | JSON,
            "anonymousId": st.text(max_size=10) | JSON,
            "previousId": st.text(max_size=10) | JSON,
            "groupId": st.text(max_size=10) | JSON,
            "properties": JSON,
            "traits": st.dictionaries(st.sampled_from(["email", "phone", "crmId", "wechatOpenId", "name"]), JSON)
            | JSON,
            "context": st.fixed_dictionaries({}, optional={"device": JSON, "traits": JSON, "ip": JSON}) | JSON,
            "timestamp": JSON,
            "sentAt": JSON,
            "messageId": st.text(max_size=10) | JSON,
        },
    )
    return base


@pytest.fixture(scope="module")
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(instance.app) as c:
        yield c


def _check(r: Any) -> None:
    assert r.status_code in (200, 400, 413), (r.status_code, r.text)
    body = r.json()
    if r.status_code == 200:
        assert body["success"] is True and body["accepted"] >= 0 and body["duplicates"] >= 0, body
    else:
        assert isinstance(body.get("error"), str) and body["error"], body


@settings(FUZZ_SETTINGS, max_examples=150)
@given(body=JSON)
def test_random_json_to_track_and_batch(client: TestClient, instance: Instance, body: Any) -> None:
    _check(client.post("/v1/track", json=body, headers=instance.write))
    _check(client.post("/v1/batch", json=body, headers=instance.write))
    _check(client.post("/v1/batch", json={"batch": body}, headers=instance.write))
    _check(client.post("/v1/batch", json={"batch": [body], "sentAt": body}, headers=instance.write))


@settings(FUZZ_SETTINGS, max_examples=150)
@given(events=st.lists(_event_like(), min_size=1, max_size=8), path=st.sampled_from(["track", "batch"]))
def test_random_events_to_track_and_batch(
    client: TestClient, instance: Instance, events: list[dict[str, Any]], path: str
) -> None:
    if path == "track":
        for ev in events:
            _check(client.post("/v1/track", json=ev, headers=instance.write))
    else:
        _check(client.post("/v1/batch", json={"batch": events}, headers=instance.write))
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["last_error"] is None, health


@settings(FUZZ_SETTINGS, max_examples=100)
@given(
    raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    path=st.sampled_from(["track", "batch"]),
)
def test_random_bytes_to_track_and_batch(client: TestClient, instance: Instance, raw: bytes, path: str) -> None:
    r = client.post(f"/v1/{path}", content=raw, headers={**instance.write, "Content-Type": "application/json"})
    _check(r)


@settings(FUZZ_SETTINGS, max_examples=100)
@given(
    params=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "user_id",
                    "email",
                    "phone",
                    "anonymous_id",
                    "device_id",
                    "crm_id",
                    "wechat_openid",
                    "wechat_unionid",
                    "events",
                    "x",
                ]
            )
            | st.text(string.ascii_letters + "_", max_size=10),
            st.text(max_size=40),
        ),
        max_size=3,
    )
)
def test_random_profile_lookups(client: TestClient, instance: Instance, params: list[tuple[str, str]]) -> None:
    r = client.get("/api/v1/profiles/lookup", params=params, headers=instance.admin)
    assert r.status_code in (200, 400, 404, 422), (params, r.status_code, r.text)
    pid = quote(params[0][1], safe="") if params and params[0][1] else "p"
    r = client.get(f"/api/v1/profiles/{pid}", headers=instance.admin)
    assert r.status_code in (200, 404), (pid, r.status_code, r.text)
