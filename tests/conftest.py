"""Shared fixtures: real SQLite and real PostgreSQL (parametrized), the app, the WeCom simulator.

Schemas are built by running the Alembic migrations: once per session into a template (SQLite file
copied per test; a private PostgreSQL database truncated per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from bot.clock import FrozenClock
from bot.config import Settings, load_settings
from bot.db import migrate_sync

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
REQUIRE_BROWSER = os.environ.get("REQUIRE_BROWSER") == "1"

# Test-only WeCom identity for the simulator (not the official sample, which has its own test).
CORP_ID = "wwbeacon0000test"
CORP_SECRET = "sim-secret-0123456789"
AGENT_ID = 1000002
CB_TOKEN = "beaconTestToken"
CB_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
T0 = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)  # 10:00 in Asia/Shanghai, a Monday


def _pg_available() -> str | None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_DSN), 3)
        await conn.close()

    try:
        asyncio.run(probe())
        return None
    except Exception as exc:  # any failure to connect means "absent"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "beacon.db"
    migrate_sync(f"sqlite+aiosqlite:///{path}")
    return path


def require_postgres() -> None:
    """Skip the test without a PostgreSQL at 127.0.0.1:5432, or fail it when REQUIRE_POSTGRES=1."""
    problem = _pg_available()
    if problem:
        if REQUIRE_POSTGRES:
            pytest.fail(f"REQUIRE_POSTGRES=1 but PostgreSQL is not reachable at 127.0.0.1:5432: {problem}")
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({problem})")


@contextlib.contextmanager
def empty_pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped afterwards. Not from a running loop."""
    require_postgres()
    import asyncpg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Any:
    """A private database for this test session, migrated once, dropped at the end."""
    with empty_pg_database("beacon_test") as url:
        migrate_sync(url)
        yield url


def _truncate_pg(url: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"
            )
            names = ", ".join(f'"{t["tablename"]}"' for t in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database: SQLite file or PostgreSQL. Every test using it runs on both."""
    if request.param == "sqlite":
        path = tmp_path / "beacon.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only, for tests about SQLite itself or subprocess tests."""
    path = tmp_path / "beacon.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def make_settings(db_url: str, api_base: str = "http://127.0.0.1:9", **sections: dict[str, Any]) -> Settings:
    base = load_settings(None, environ={})
    data: dict[str, dict[str, Any]] = {
        "database": {"url": db_url},
        "server": {"admin_token": "test-admin-token", "secret_key": "test-secret-key-for-signing"},
        "wecom": {
            "corp_id": CORP_ID,
            "agent_id": AGENT_ID,
            "secret": CORP_SECRET,
            "token": CB_TOKEN,
            "encoding_aes_key": CB_AES_KEY,
            "api_base": api_base,
            "replay_window_s": 600,
        },
        "inbox": {"retry_base_s": 1.0, "max_attempts": 3},
        "team": {
            "members": [
                {"userid": "rep1", "name": "张三", "role": "rep", "manager": "mgr1"},
                {"userid": "rep2", "name": "李四", "role": "rep", "manager": "mgr1"},
                {"userid": "mgr1", "name": "王经理", "role": "manager"},
            ]
        },
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return base.replace(**data)


@dataclass
class Sim:
    state: Any
    url: str


@pytest.fixture
async def sim(aiohttp_server: Any, clock: FrozenClock) -> Sim:
    """The WeCom simulator on a loopback port, on the test's clock."""
    from bot.wecom.simulator import SimState, create_simulator_app

    state = SimState(CORP_ID, CORP_SECRET, AGENT_ID, clock=lambda: clock.now().timestamp())
    server = await aiohttp_server(create_simulator_app(state))
    return Sim(state, str(server.make_url("")).rstrip("/"))


@pytest.fixture
def settings(db_url: str, sim: Sim) -> Settings:
    return make_settings(db_url, api_base=sim.url)


@dataclass
class Beacon:
    """The app under test, its runtime, an HTTP client and a WeCom driver aimed at its callback URL."""

    client: Any
    rt: Any
    driver: Any
    sim: Sim
    clock: FrozenClock

    async def process(self) -> int:
        """Run the background work now (inbox then outbox), as the workers would."""
        handled = await self.rt.inbox.drain()
        await self.rt.outbox.drain()
        return handled


@pytest.fixture
async def beacon(aiohttp_client: Any, settings: Settings, sim: Sim, clock: FrozenClock) -> AsyncIterator[Beacon]:
    import aiohttp

    from bot.app import RUNTIME, create_app
    from bot.wecom.simulator import CallbackDriver

    app = create_app(settings, clock=clock, background=False)
    client = await aiohttp_client(app)
    async with aiohttp.ClientSession() as http:
        driver = CallbackDriver(
            http,
            str(client.make_url("/wecom/callback")),
            token=CB_TOKEN,
            encoding_aes_key=CB_AES_KEY,
            corp_id=CORP_ID,
            agent_id=AGENT_ID,
            state=sim.state,
        )
        yield Beacon(client, app[RUNTIME], driver, sim, clock)


LIBRARY = Path(__file__).resolve().parent.parent / "content" / "library"


@pytest.fixture
async def lib(beacon: Beacon, tmp_path: Path) -> Path:
    """The sample content library, imported into the beacon's database (a module may define its own)."""
    from content.importer import import_library

    folder = tmp_path / "library"
    shutil.copytree(LIBRARY, folder)
    async with beacon.rt.sessions() as session, session.begin():
        await import_library(session, folder, now=beacon.clock.now())
    return folder


@pytest.fixture
def no_client_sleep(beacon: Beacon) -> list[float]:
    """The API client's own retry pauses are recorded, not slept (the test's clock is simulated)."""
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    beacon.rt.wecom._sleep = record
    return slept
