"""Reads that can wait (the nightly jobs', the digests') run on connections of their own at background
CPU priority.

On SQLite a chunk of decay's aggregates keeps a connection's thread busy for tens of milliseconds;
at normal priority it took half of a shared core from the link opens answered meanwhile. Those
connections run at SCHED_IDLE, and can only read. PostgreSQL does a read's work in its own server
process: there the background reads are the ordinary read sessions.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Iterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from bot.batch import on_driver
from bot.config import Settings
from bot.digest.jobs import digest_managers, digest_reps
from bot.models import Event, StageChange, Task
from bot.priority import in_turns
from bot.runtime import Runtime
from bot.scheduler import daily_key, run_job
from bot.scoring.jobs import decay_scores, mark_dormant_customers
from tests.conftest import make_settings
from tests.test_digest import TEAM, mon, seed
from tests.test_scoring_live import contact_json, new_contact, post_event, settle


async def thread_of(sessions: Any) -> tuple[int, int]:
    """(native thread id, scheduling policy) of the thread a session's connection runs on (SQLite)."""
    async with sessions() as session:
        conn = await session.connection()
        return await on_driver(conn, lambda _c: (threading.get_native_id(), os.sched_getscheduler(0)), sql="probe")  # type: ignore[no-any-return]


class Statements:
    """The statements each engine ran, in order."""

    def __init__(self, rt: Any) -> None:
        self.engines = {"background": rt.background_engine.sync_engine, "main": rt.engine.sync_engine}
        self.ran: dict[str, list[str]] = {name: [] for name in self.engines}
        self._listeners = {name: self._recorder(name) for name in self.engines}

    def _recorder(self, name: str) -> Any:
        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            self.ran[name].append(" ".join(statement.split()))

        return record

    def __enter__(self) -> "Statements":
        for name, engine in self.engines.items():
            event.listen(engine, "before_cursor_execute", self._listeners[name])
        return self

    def __exit__(self, *_exc: object) -> None:
        for name, engine in self.engines.items():
            event.remove(engine, "before_cursor_execute", self._listeners[name])

    def matching(self, name: str, *parts: str) -> list[str]:
        return [s for s in self.ran[name] if all(p in s for p in parts)]


@pytest.fixture
def settings(sqlite_url: str, sim: Any) -> Settings:
    """The app on a SQLite file (PostgreSQL has no background readers of its own: the last test)."""
    return make_settings(sqlite_url, api_base=sim.url, team={"members": TEAM})


@pytest.fixture
def statements(beacon: Any) -> Iterator[Statements]:
    with Statements(beacon.rt) as recorded:
        yield recorded


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_background_readers_run_at_idle_priority_and_cannot_write(beacon: Any, statements: Statements) -> None:
    rt = beacon.rt
    tid, policy = await thread_of(rt.background_reads)
    assert policy == os.SCHED_IDLE and tid != threading.get_native_id()
    # Everything else keeps its priority: the event loop, the hot path's reads, the writers.
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
    assert (await thread_of(rt.read_sessions))[1] != os.SCHED_IDLE
    assert (await thread_of(rt.sessions))[1] != os.SCHED_IDLE
    # A write would bypass this process's write gate: the connection refuses it.
    await new_contact(beacon, "wmReadOnly")
    async with rt.background_reads() as session:
        with pytest.raises(OperationalError, match="readonly"):
            await session.execute(text("UPDATE contacts SET score = 99"))
    assert (await contact_json(beacon, "wmReadOnly"))["score"] == 0
    # The readers' connections are closed with the runtime's (Runtime.stop).
    assert rt.background_engine.pool.checkedin() >= 1
    await rt.dispose_engines()
    assert rt.background_engine.pool.checkedin() == 0


async def test_decay_and_dormancy_read_in_the_background_and_write_as_before(beacon: Any, statements: Statements) -> None:
    for n in range(3):
        await new_contact(beacon, f"wmQuiet{n}", owner_userid="rep1")
        await post_event(beacon, f"wmQuiet{n}", "webinar_attended")
    await new_contact(beacon, "wmPaid", owner_userid="rep2")
    await post_event(beacon, "wmPaid", "payment", at=beacon.clock.now(), amount=1000)
    await settle(beacon)
    before = (await contact_json(beacon, "wmQuiet0"))["score"]
    beacon.clock.advance(days=600)  # past decay's quiet days and dormancy's window
    statements.ran = {name: [] for name in statements.ran}

    assert await run_job(beacon.rt, "decay-scores", decay_scores, "decay-scores:bg")
    assert await run_job(beacon.rt, "mark-dormant", mark_dormant_customers, "mark-dormant:bg")

    chunk_reads = ("WITH chunk AS", "GROUP BY score_ledger.contact_id")
    assert statements.matching("background", *chunk_reads) and not statements.matching("main", *chunk_reads)
    candidates = ("SELECT contacts.id FROM contacts", "contacts.last_payment_at <")
    assert statements.matching("background", *candidates) and not statements.matching("main", *candidates)
    # The writes go where they always went: the main engine, through the write gate (decay's in one
    # call on the driver, which SQLAlchemy's events do not see).
    assert statements.matching("main", "UPDATE contacts SET stage")
    assert not any(s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE") for s in statements.ran["background"])
    after = await contact_json(beacon, "wmQuiet0")
    assert after["score"] < before and after["score_breakdown"][-1]["rule"] == "decay"
    assert (await contact_json(beacon, "wmPaid"))["stage"] == "dormant"


async def test_digests_read_in_the_background(beacon: Any, statements: Statements) -> None:
    """The digests' aggregates run on the background readers; the claims and the queued messages
    are written as before."""
    await seed(beacon.rt)
    beacon.clock.set(mon(9, day=24))
    statements.ran = {name: [] for name in statements.ran}

    assert await run_job(beacon.rt, "digest-reps", digest_reps, daily_key("digest-reps", beacon.rt))
    assert await run_job(beacon.rt, "digest-managers", digest_managers, daily_key("digest-managers", beacon.rt))

    for model in (Task, StageChange, Event):
        table = f"FROM {model.__tablename__}"
        assert statements.matching("background", "SELECT", table), table
        assert not statements.matching("main", "SELECT", table), table
    assert not any(s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE") for s in statements.ran["background"])
    await beacon.rt.outbox.drain()
    assert [m.msgtype for m in beacon.sim.state.messages_to("rep1")] == ["markdown"]
    assert [m.msgtype for m in beacon.sim.state.messages_to("mgr1")] == ["markdown", "image"]


async def test_background_reads_on_each_database(db_url: str) -> None:
    """A SQLite file: an engine of its own on the same file. PostgreSQL: the read sessions, whose
    work runs in the server's process."""
    rt = Runtime.build(make_settings(db_url), routers=[])
    try:
        if rt.engine.dialect.name == "sqlite":
            assert rt.background_engine is not None and rt.background_engine.url == rt.engine.url
        else:
            assert rt.background_engine is None
        async with rt.background_reads() as session:
            assert session.bind.url == rt.engine.url
            assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await rt.dispose_engines()


async def test_background_loops_let_the_event_loop_run_in_turns() -> None:
    """`in_turns` hands the loop over after every `every` items: a request waiting on it is answered
    within one turn, not after the whole loop (2,000 reps' digests held it for 50–100 ms at a time)."""
    turns: list[int] = []
    done: list[int] = []

    async def meanwhile() -> None:  # what a link open would be: ready, waiting for the loop
        while len(done) < 1000:
            turns.append(len(done))
            await asyncio.sleep(0)

    other = asyncio.ensure_future(meanwhile())
    await asyncio.sleep(0)  # it starts
    async for n in in_turns(range(1000), 100):
        done.append(n)
    await other
    assert done == list(range(1000))
    assert sorted(set(turns)) == list(range(0, 1000, 100))  # a turn after each hundred, none between


async def test_a_reader_that_cannot_be_lowered_still_reads_and_says_so(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Where neither SCHED_IDLE nor a nice value can be set, the jobs still run, at normal priority."""
    import bot.db

    monkeypatch.setattr(bot.db, "background_priority", lambda: None)
    rt = Runtime.build(make_settings(sqlite_url), routers=[])
    try:
        with caplog.at_level("WARNING", logger="beacon.db"):
            async with rt.background_reads() as session:
                assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await rt.dispose_engines()
    assert "could not lower a background reader's CPU priority" in caplog.text
