"""Waking the workers of other processes on PostgreSQL (bot/notify.py): two `serve` processes on one
database, the tracker and the inbox workers polling only every minute. The process holding the tracker
lease scores the opens the other one answers, and processes the callbacks the other one (with
`[inbox] workers = 0`) only stores, within seconds: woken by NOTIFY, not by their poll. With `[database]
notify = false` the same opens wait for the poll."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.conftest import AGENT_ID, CORP_ID, CORP_SECRET
from tests.helpers import ROOT, Server, free_port, run_cli
from tests.test_scaleout import UA, Cluster, _config, _counter, _cookie, _db, _digest_minute, _text_xml
from tests.test_scaleout import pg_url  # noqa: F401,F811  (fixture)

POLL_S = 60  # the tracker's and the inbox workers' poll: far longer than the test waits


def _serving_config(path: Path, *, db_url: str, api_base: str, port: int, notify: bool, inbox_workers: int,
                    tracker: bool = True) -> Path:
    _config(path, db_url=db_url, api_base=api_base, port=port, digest_at=_digest_minute())
    text = path.read_text(encoding="utf-8").replace("[database]\n", f"[database]\nnotify = {str(notify).lower()}\n", 1)
    text = text.replace("[scheduler]\n", "[scheduler]\nenabled = false\n", 1)  # no catch-up jobs waking anyone
    text += f"\n[tracker]\nenabled = {str(tracker).lower()}\npoll_s = {POLL_S}\n[inbox]\npoll_s = {POLL_S}\nworkers = {inbox_workers}\n"
    path.write_text(text, encoding="utf-8")
    return path


async def _tracker_owner_pid(url: str) -> int | None:
    conn = await _db(url)
    try:
        owner = await conn.fetchval("SELECT owner FROM leases WHERE name = 'tracker' AND locked_until > now() AT TIME ZONE 'utc'")
    finally:
        await conn.close()
    return None if owner is None else int(owner.split(":")[1])


async def _waiting(url: str) -> tuple[int, int]:
    """(events not yet processed, callbacks not yet done)."""
    conn = await _db(url)
    try:
        return (await conn.fetchval("SELECT count(*) FROM events WHERE NOT processed"),
                await conn.fetchval("SELECT count(*) FROM inbox WHERE status <> 'done'"))
    finally:
        await conn.close()


async def _terminate_wakeup_connections(url: str) -> int:
    from bot.notify import APPLICATION_NAME

    conn = await _db(url)
    try:
        return len(await conn.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 "
                                    "AND datname = current_database()",
                                    APPLICATION_NAME))
    finally:
        await conn.close()


async def _until_drained(url: str, timeout_s: float) -> tuple[tuple[int, int], float]:
    """Poll the database until nothing waits (or the time is up); returns what waits and how long it took."""
    began = time.monotonic()
    while True:
        waiting = await _waiting(url)
        if waiting == (0, 0) or time.monotonic() - began > timeout_s:
            return waiting, time.monotonic() - began
        await asyncio.sleep(0.05)


async def _share(cluster: Cluster) -> str:
    status, share = await cluster.api(0, "POST", "/api/shares", {"content": "pitch-deck-company-overview", "rep": "rep1"})
    assert status == 201, share
    return str(share["token"])


async def _open(cluster: Cluster, token: str, tag: str, numbers: range) -> None:
    """New visitors open the link on process 0 of the cluster."""
    for n in numbers:
        assert await cluster.open_link(0, token, _cookie(tag, n)) == 200


async def _simulator(aiohttp_server: Any) -> tuple[Any, str]:
    from bot.wecom.simulator import SimState, create_simulator_app

    state = SimState(CORP_ID, CORP_SECRET, AGENT_ID)
    sim = await aiohttp_server(create_simulator_app(state))
    return state, str(sim.make_url("")).rstrip("/")


def _import_library(config: Path) -> None:
    imported = run_cli("--config", str(config), "content", "import", str(ROOT / "content" / "library"))
    assert imported.returncode == 0, imported.stderr


@contextlib.asynccontextmanager
async def _two_processes(tmp_path: Path, aiohttp_server: Any, url: str, *, notify: bool) -> AsyncIterator[tuple[Server, Server, Cluster]]:
    """Process A (the tracker, inbox workers) started first, then B, which only stores callbacks;
    requests go to B (the cluster's process 0). Both are stopped after, and must exit 0."""
    state, api_base = await _simulator(aiohttp_server)
    ports = [free_port(), free_port()]
    configs = [_serving_config(tmp_path / f"beacon{n}.toml", db_url=url, api_base=api_base, port=port, notify=notify,
                               inbox_workers=1 - n) for n, port in enumerate(ports)]
    _import_library(configs[0])
    a, b = Server(configs[0], ports[0]), Server(configs[1], ports[1])
    await a.start()
    try:
        deadline = time.monotonic() + 15
        while await _tracker_owner_pid(url) != a.proc.pid:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "process A never took the tracker lease"
            await asyncio.sleep(0.05)
        await b.start()
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(1.5)  # both tracker loops past their first pass: from here on only a wake-up starts one
            yield a, b, Cluster([b, a], state, http)
    finally:
        codes = [await b.stop() if b.proc is not None else 0, await a.stop()]
    assert codes == [0, 0], [s.log.read_text()[-2000:] for s in (a, b)]


@pytest.mark.postgres
@pytest.mark.slow
async def test_the_tracker_and_inbox_of_another_process_are_woken_at_once(tmp_path: Path, aiohttp_server: Any,
                                                                          pg_url: str) -> None:  # noqa: F811
    async with _two_processes(tmp_path, aiohttp_server, pg_url, notify=True) as (a, b, cluster):
        token = await _share(cluster)
        await _open(cluster, token, "notify", range(5))
        assert await cluster.callback(_text_xml("rep1", "帮助", 7_100_000_001), [0]) == [200]
        waiting, took = await _until_drained(pg_url, timeout_s=10)
        assert waiting == (0, 0), f"still waiting after {took:.1f} s (events, callbacks): {waiting}"
        # The listening connections dropped (a PostgreSQL restart, say): they come back, and so do the wake-ups.
        assert await _terminate_wakeup_connections(pg_url) == 2
        await asyncio.sleep(3)  # the first reconnect is after 1 s
        await _open(cluster, token, "notify", range(5, 8))
        waiting, took = await _until_drained(pg_url, timeout_s=10)
        assert waiting == (0, 0), f"after the reconnect, still waiting after {took:.1f} s: {waiting}"
        assert "reconnecting" in b.log.read_text()
        http = cluster.http
        sent = _counter(await (await http.get(f"{b.url}/metrics")).text(), "beacon_wakeups_sent_total")
        received = _counter(await (await http.get(f"{a.url}/metrics")).text(), "beacon_wakeups_received_total")
        assert sent >= 2 and received >= 2, (sent, received)  # both channels, coalesced per burst
        async with http.get(f"{b.url}/l/{token}", headers={"User-Agent": UA}) as resp:
            assert resp.status == 200  # B still serves after all that


@pytest.mark.postgres
@pytest.mark.slow
async def test_without_notify_another_processes_opens_wait_for_the_trackers_poll(tmp_path: Path, aiohttp_server: Any,
                                                                                pg_url: str) -> None:  # noqa: F811
    async with _two_processes(tmp_path, aiohttp_server, pg_url, notify=False) as (_a, _b, cluster):
        await _open(cluster, await _share(cluster), "nonotify", range(3))
        await asyncio.sleep(3)
        events, _callbacks = await _waiting(pg_url)
        assert events >= 3  # the opens and their forwards, untouched until A's next poll


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_process_with_the_tracker_off_never_takes_the_lease_and_its_events_are_scored_elsewhere(
        tmp_path: Path, aiohttp_server: Any, pg_url: str) -> None:  # noqa: F811
    """`[tracker] enabled = false` (with `[inbox] workers = 0`: a process that only answers). Alone, its
    opens wait and nobody holds the lease; once a process that tracks starts, it scores them."""
    state, api_base = await _simulator(aiohttp_server)
    ports = [free_port(), free_port()]
    edge_only = _serving_config(tmp_path / "edge.toml", db_url=pg_url, api_base=api_base, port=ports[0], notify=True,
                                inbox_workers=0, tracker=False)
    worker = _serving_config(tmp_path / "worker.toml", db_url=pg_url, api_base=api_base, port=ports[1], notify=True,
                             inbox_workers=1)
    _import_library(edge_only)
    b, a = Server(edge_only, ports[0]), Server(worker, ports[1])
    await b.start()
    try:
        async with aiohttp.ClientSession() as http:
            cluster = Cluster([b], state, http)
            await _open(cluster, await _share(cluster), "edgeonly", range(3))
            await asyncio.sleep(2)
            assert (await _waiting(pg_url))[0] >= 3
            assert await _tracker_owner_pid(pg_url) is None
            await a.start()
            waiting, took = await _until_drained(pg_url, timeout_s=10)
            assert waiting == (0, 0), f"still waiting after {took:.1f} s: {waiting}"
            assert await _tracker_owner_pid(pg_url) == a.proc.pid  # type: ignore[union-attr]
    finally:
        codes = [await b.stop()] + ([await a.stop()] if a.proc is not None else [])
    assert set(codes) == {0}, [s.log.read_text()[-2000:] for s in (a, b) if s.log.exists()]
    assert "tracker off in this process" in b.log.read_text()


def test_the_wakeup_connection_takes_the_databases_address_and_names_itself() -> None:
    """Its own connection, from the same URL: what asyncpg takes of it, and an application_name that
    tells it apart in pg_stat_activity (the test above terminates it by that name)."""
    from bot.config import DatabaseSettings
    from bot.db import create_engine
    from bot.notify import APPLICATION_NAME, connect_args

    engine = create_engine(DatabaseSettings(url="postgresql+asyncpg://beacon:s3cret@db.internal:6432/crm?prepared_statement_cache_size=0"))
    args = connect_args(engine)
    assert {k: args[k] for k in ("host", "port", "user", "password", "database")} == {
        "host": "db.internal", "port": 6432, "user": "beacon", "password": "s3cret", "database": "crm"}
    assert args["server_settings"] == {"application_name": APPLICATION_NAME}
    assert "prepared_statement_cache_size" not in args  # SQLAlchemy's, not asyncpg.connect's


async def _session_to_a_worker_other_than(url: str, pid: int) -> aiohttp.ClientSession:
    """An HTTP session whose one keep-alive connection landed on a worker other than `pid` (the kernel
    spreads new connections over the workers sharing the port)."""
    for _ in range(200):
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        async with http.get(f"{url}/healthz") as resp:
            if (await resp.json())["pid"] != pid:
                return http
        await http.close()
    raise AssertionError(f"every connection landed on worker {pid}")


@pytest.mark.slow
async def test_sqlite_workers_of_one_supervisor_wake_each_other_through_the_files_commits(tmp_path: Path,
                                                                                        aiohttp_server: Any) -> None:
    """`serve --workers 2` on one SQLite file, polls at a minute: the opens answered by the worker
    without the tracker lease, and the events of the callbacks it processes, are scored within
    seconds, because the lease holder's tracker watches the file for the other worker's commits."""
    state, api_base = await _simulator(aiohttp_server)
    port = free_port()
    db = tmp_path / "beacon.db"
    config = _serving_config(tmp_path / "beacon.toml", db_url=f"sqlite+aiosqlite:///{db}", api_base=api_base, port=port,
                             notify=True, inbox_workers=1)
    assert run_cli("--config", str(config), "migrate").returncode == 0
    _import_library(config)
    server = Server(config, port, args=("--workers", "2"))
    await server.start()

    def waiting() -> tuple[int, int]:
        with sqlite3.connect(db) as conn:
            return (conn.execute("SELECT count(*) FROM events WHERE NOT processed").fetchone()[0],
                    conn.execute("SELECT count(*) FROM inbox WHERE status <> 'done'").fetchone()[0])

    try:
        await asyncio.sleep(2)  # both trackers past their first pass; one holds the lease
        with sqlite3.connect(db) as conn:
            holder = int(conn.execute("SELECT owner FROM leases WHERE name = 'tracker'").fetchone()[0].split(":")[1])
        http = await _session_to_a_worker_other_than(server.url, holder)
        try:
            cluster = Cluster([server], state, http)
            await _open(cluster, await _share(cluster), "sqlite", range(8))
            for n in range(3):
                assert await cluster.callback(_text_xml("rep1", "帮助", 7_200_000_000 + n), [0]) == [200]
            began = time.monotonic()
            while waiting() != (0, 0) and time.monotonic() - began < 10:
                await asyncio.sleep(0.1)
            assert waiting() == (0, 0), f"still waiting after 10 s (events, callbacks): {waiting()}"
        finally:
            await http.close()
    finally:
        code = await server.stop()
    assert code == 0, server.log.read_text()[-2000:]
