"""Security promises checked through HTTP: headers, per-IP limits, constant-time admin auth."""

from __future__ import annotations

from typing import Any

import pytest

from bot.app import create_app
from tests.conftest import make_settings
from tests.test_links import AUTH, share  # noqa: F401

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def test_security_headers_on_pages_and_api(beacon: Any, lib: Any) -> None:  # noqa: F811
    s = await share(beacon, "case-auto-parts-oee")
    resp = await beacon.client.get(f"/l/{s['token']}", headers={"User-Agent": "Mozilla/5.0 (iPhone) MicroMessenger/8.0"})
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    api = await beacon.client.get("/api/content", headers=AUTH)
    assert api.headers["X-Content-Type-Options"] == "nosniff"


async def test_per_ip_rate_limit_on_public_pages(aiohttp_client: Any, db_url: str, clock: Any) -> None:
    settings = make_settings(db_url, security={"public_per_ip_per_minute": 5})
    client = await aiohttp_client(create_app(settings, clock=clock, background=False))
    statuses = [(await client.get("/l/" + "A" * 24)).status for _ in range(7)]
    assert statuses == [404] * 5 + [429, 429]
    # a different client behind the trusted proxy (the test client connects from 127.0.0.1)
    other = await client.get("/l/" + "A" * 24, headers={"X-Forwarded-For": "203.0.113.9"})
    assert other.status == 404
    # callbacks, health and the API are not public pages: not limited here
    assert (await client.get("/healthz")).status == 200
    clock.advance(seconds=60)
    assert (await client.get("/l/" + "A" * 24)).status == 404


async def test_admin_api_requires_token(beacon: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dGVzdA=="}, {"Authorization": "Bearer test-admin-tokeX"}):
        resp = await beacon.client.get("/api/content", headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_api_disabled_without_token(aiohttp_client: Any, db_url: str) -> None:
    settings = make_settings(db_url, server={"admin_token": ""})
    client = await aiohttp_client(create_app(settings, background=False))
    resp = await client.get("/api/content", headers={"Authorization": "Bearer "})
    assert resp.status == 403
    assert "disabled" in (await resp.json())["error"]
