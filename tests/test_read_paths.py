"""What only reads never takes SQLite's write lock.

On SQLite a unit-of-work session takes the one write lock when it begins (bot/db.py, WriteGate). A
page, an API listing, a health check or a CLI listing that opened one held the lock while it
counted, and waited for whoever held it: `/api/channels` counts every contact and every open and
add event (seconds at a million contacts), during which link opens and callbacks could not commit;
`/healthz` waited behind a long write and reported the database unreachable.

Here another connection holds the write lock, as a CLI command, a rescore or a long write of another
process would, and the app's busy timeout is short: every GET route that reads must still answer.
The routes that write on a GET are named with what they write; a new GET route must be put on one
side or the other.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.models import ContentItem, Share, Task
from tests.helpers import run_cli
from tests.pages_seed import PageUser, page_settings, seed

BUSY_MS = 300

# GET routes that write, and what they write: they wait for the lock like any writer.
WRITES = {
    "/l/{token}": "records the open",
    "/l/{token}/file": "records the download",
    "/l/{token}/oauth": "binds the browser to the person WeCom names",
    "/auth/wecom/callback": "adds or updates the member who logged in",
}

# Every other GET route, as (path, who asks, the status it answers while the lock is held).
READS: dict[str, tuple[str, str, int]] = {
    "/static": ("/static/dash.css", "anyone", 200),
    "/healthz": ("/healthz", "anyone", 200),
    "/metrics": ("/metrics", "anyone", 200),
    "/login": ("/login", "anyone", 200),
    "/auth/wecom/start": ("/auth/wecom/start?next=/dashboard", "anyone", 302),
    "/wecom/callback": ("/wecom/callback?msg_signature=x&timestamp=1&nonce=n&echostr=e", "anyone", 403),
    "/dashboard": ("/dashboard", "admin", 200),
    "/dashboard/content": ("/dashboard/content", "admin", 200),
    "/dashboard/reps": ("/dashboard/reps", "admin", 200),
    "/dashboard/contacts": ("/dashboard/contacts", "admin", 200),
    "/dashboard/contacts/{key}": ("/dashboard/contacts/wmC1", "admin", 200),
    "/admin/content": ("/admin/content", "admin", 200),
    "/admin/channels": ("/admin/channels", "admin", 200),
    "/admin/scoring": ("/admin/scoring", "admin", 200),
    "/admin/playbooks": ("/admin/playbooks", "admin", 200),
    "/admin/mass-sends": ("/admin/mass-sends", "admin", 200),
    "/api/channels": ("/api/channels", "api", 200),
    "/api/content": ("/api/content", "api", 200),
    "/api/contacts.csv": ("/api/contacts.csv", "api", 200),
    "/api/contacts/{external_userid}": ("/api/contacts/wmC1", "api", 200),
    "/api/tasks": ("/api/tasks", "api", 200),
    "/api/mass-sends/{id}": ("/api/mass-sends/1", "api", 404),  # none seeded: read, not found
    "/tasks": ("/tasks", "member", 200),
    "/tasks/{id}": ("/tasks/{task}", "member", 200),
    "/sidebar": ("/sidebar?contact=wmC1", "member", 200),
    "/sidebar/jsconfig": ("/sidebar/jsconfig?url={base}/sidebar", "member", 200),
    "/sidebar/activity": ("/sidebar/activity?contact=wmC1", "member", 200),
    "/sidebar/internal/{slug}": ("/sidebar/internal/{internal}", "member", 200),
}


@pytest.fixture
def settings(sqlite_url: str, sim: Any) -> Any:
    return page_settings(sqlite_url, sim.url, database={"url": sqlite_url, "busy_timeout_ms": BUSY_MS})


@contextlib.contextmanager
def write_lock_held(url: str) -> Iterator[None]:
    """SQLite's write lock, taken by a connection of its own (as another process would)."""
    holder = sqlite3.connect(make_url(url).database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def _get_routes(app: Any) -> set[str]:
    return {route.resource.canonical for route in app.router.routes() if route.method == "GET" and route.resource is not None}


def test_every_get_route_is_classified(beacon: Any) -> None:
    routes = _get_routes(beacon.client.app)
    assert not set(WRITES) & set(READS)
    assert routes == set(WRITES) | set(READS), "a new GET route: add it to READS (checked below) or WRITES (with what it writes)"


async def test_reading_routes_answer_while_another_connection_holds_the_write_lock(
    beacon: Any, sqlite_url: str, lib: Path  # noqa: F811
) -> None:
    await seed(beacon)
    async with beacon.rt.sessions() as session:
        task = await session.scalar(select(Task.id).where(Task.owner_userid == "rep1").limit(1))
        internal = await session.scalar(select(ContentItem.slug).where(ContentItem.internal.is_(True)).limit(1))
    assert task is not None and internal is not None
    base = str(beacon.client.make_url("")).rstrip("/")
    anyone, admin, member = PageUser(base, "Mozilla/5.0"), PageUser(base, "Mozilla/5.0"), PageUser(base, "Mozilla/5.0")
    try:
        assert (await admin.login_admin())[0] == 303
        await member.login_member(beacon, "rep1")
        await member.get("/sidebar/jsconfig?url=" + base + "/sidebar")  # the jsapi ticket, fetched before the lock
        api = {"Authorization": "Bearer test-admin-token"}
        answers: dict[str, int] = {}
        bodies: dict[str, str] = {}
        with write_lock_held(sqlite_url):
            for template, (path, who, _) in READS.items():
                url = path.format(task=task, internal=internal, base=base)
                if who == "api":
                    status, body, _ = await anyone.get(url, headers=api)
                else:
                    status, body, _ = await {"anyone": anyone, "admin": admin, "member": member}[who].get(url)
                answers[template] = status
                bodies[template] = body
    finally:
        for user in (anyone, admin, member):
            await user.close()
    wrong = {t: answers[t] for t, (_, _, expected) in READS.items() if answers[t] != expected}
    assert not wrong, f"answered otherwise while the write lock was held: {wrong}"
    # No time limit: a route that began a write would have failed with "database is locked" after the
    # busy timeout (a 5xx above), and a busy test machine makes a page slow without any lock.
    # /metrics answers 200 whatever happens; its queue depths are there only when it could read them.
    assert 'beacon_outbox_depth{status="pending"} 0.0' in bodies["/metrics"]
    assert json.loads(bodies["/healthz"])["outbox"] == {"pending": 0, "failed": 0}


async def test_a_writing_route_does_wait_for_the_lock(beacon: Any, sqlite_url: str, lib: Path) -> None:  # noqa: F811
    """The check above can fail: a route that writes, with the lock held elsewhere, gives up after the
    busy timeout (the link page answers 503, its open not recorded) and records the open once the
    lock is free."""
    await seed(beacon)
    async with beacon.rt.sessions() as session:
        token = await session.scalar(select(Share.token).limit(1))
    visitor = PageUser(str(beacon.client.make_url("")).rstrip("/"), "Mozilla/5.0 (iPhone) MicroMessenger/8.0")
    try:
        with write_lock_held(sqlite_url):
            began = time.perf_counter()
            status, page, resp = await visitor.get(f"/l/{token}")
            waited = time.perf_counter() - began
        assert status == 503 and waited >= BUSY_MS / 1000
        assert resp.headers["Retry-After"] == "5" and "请稍后再试" in page
        status, _, _ = await visitor.get(f"/l/{token}")
        assert status == 200
    finally:
        await visitor.close()


async def test_opens_that_meet_the_lock_together_all_answer_503_without_a_retry_row_by_row(
    beacon: Any, sqlite_url: str, lib: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Several opens in one group commit, the lock held elsewhere past the busy timeout: the batch fails
    for the database, not for a row, so it is not tried again row by row (each row would wait out the
    busy timeout in turn); every open answers 503 at once, and each is recorded when opened again."""
    import asyncio
    import logging

    await seed(beacon)
    async with beacon.rt.sessions() as session:
        token = await session.scalar(select(Share.token).limit(1))
    visitors = [PageUser(str(beacon.client.make_url("")).rstrip("/"), "Mozilla/5.0 (iPhone) MicroMessenger/8.0")
                for _ in range(5)]
    try:
        with caplog.at_level(logging.WARNING), write_lock_held(sqlite_url):
            began = time.perf_counter()
            answers = await asyncio.gather(*(v.get(f"/l/{token}") for v in visitors))
            waited = time.perf_counter() - began
        assert [status for status, _, _ in answers] == [503] * 5
        assert waited < 3 * BUSY_MS / 1000  # not one busy timeout per row
        assert "row by row" not in caplog.text
        assert [(await v.get(f"/l/{token}"))[0] for v in visitors] == [200] * 5
    finally:
        for v in visitors:
            await v.close()


@pytest.mark.parametrize("args", [("channel", "list", "--json"), ("sop", "list"), ("inbox", "list"), ("contact", "export", "wmC1")])
async def test_listing_commands_run_while_another_connection_holds_the_write_lock(
    beacon: Any, sqlite_url: str, args: tuple[str, ...], tmp_path: Path, lib: Path  # noqa: F811
) -> None:
    await seed(beacon)
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'[database]\nurl = "{sqlite_url}"\nbusy_timeout_ms = {BUSY_MS}\n')
    with write_lock_held(sqlite_url):
        result = run_cli("--config", str(cfg), *args)
    assert result.returncode == 0, result.stderr
    if args[0] == "contact":
        assert json.loads(result.stdout)["contact"]["external_userid"] == "wmC1"
    if args[0] == "channel":
        assert {c["name"]: c["contacts"] for c in json.loads(result.stdout)} == {"2026工博会": 2, "官网": 2}

