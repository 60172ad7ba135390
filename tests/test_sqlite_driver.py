"""SQLite's hop-saving driver (bot/sqlite_driver.py) and the group commit's one-trip batches (bot/batch.py).

Both exist to make fewer round trips to aiosqlite's thread; these tests hold them to doing the same
thing as the plain path: the same rows, the same errors, the same turn-taking at the write gate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from bot import sqlite_driver
from bot.batch import BatchWriter
from bot.db import create_engine, session_factory
from bot.models import Event, Lease, Visitor
from bot.tracking import EventLog
from tests.conftest import T0, make_settings
from tests.helpers import engine_without_busy_wait


def _count_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    trips: list[str] = []
    original = sqlite_driver.HopSavingConnection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(sqlite_driver.HopSavingConnection, "_execute", counted)
    return trips


async def test_a_statement_is_one_trip_to_the_thread(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(make_settings(sqlite_url).database)
    try:
        async with engine.connect() as conn:  # connected (pragmas and all) before counting
            await conn.execute(text("SELECT 1"))
            trips = _count_trips(monkeypatch)
            rows = (await conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"))).all()
            assert len(rows) > 10 and ("events",) in rows
            assert len(trips) == 1, trips  # aiosqlite's own cursor: create, execute, fetch, close = 4
            trips.clear()
            result = await conn.execute(text("UPDATE leases SET owner = 'x' WHERE name = 'none'"))
            assert result.rowcount == 0 and len(trips) == 1, trips
    finally:
        await engine.dispose()


async def test_results_larger_than_the_prefetch_come_whole_and_stream(sqlite_url: str) -> None:
    engine = create_engine(make_settings(sqlite_url).database)
    n = sqlite_driver.PREFETCH_ROWS * 3 + 17
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Lease), [{"name": f"l{i:05d}", "owner": "o", "locked_until": T0} for i in range(n)])
        async with engine.connect() as conn:
            names = (await conn.scalars(select(Lease.name).order_by(Lease.name))).all()
            assert names == [f"l{i:05d}" for i in range(n)]
            streamed: list[str] = []
            result = await conn.stream(select(Lease.name).order_by(Lease.name))
            async for part in result.partitions(100):
                streamed.extend(row[0] for row in part)
            assert streamed == names
            # a stream left half-read and closed gives its statement back: the connection writes on
            result = await conn.stream(select(Lease.name))
            assert len(await result.fetchmany(5)) == 5
            await result.close()
            await conn.execute(text("DELETE FROM leases WHERE name = 'l00000'"))
            await conn.commit()
            assert await conn.scalar(select(func.count()).select_from(Lease)) == n - 1
    finally:
        await engine.dispose()


async def test_errors_are_sqlalchemy_errors_and_the_connection_lives_on(sqlite_url: str) -> None:
    engine = create_engine(make_settings(sqlite_url).database)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            session.add(Lease(name="a", owner="o", locked_until=T0))
        with pytest.raises(IntegrityError):
            async with sessions() as session, session.begin():
                session.add(Lease(name="a", owner="o", locked_until=T0))
        async with sessions() as session, session.begin():
            session.add(Lease(name="b", owner="o", locked_until=T0))
        async with engine.connect() as conn:
            assert (await conn.scalars(select(Lease.name).order_by(Lease.name))).all() == ["a", "b"]
    finally:
        await engine.dispose()


def _raw_rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


NOW = dt.datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=dt.timezone.utc)


def _link_event_params(n: int, via: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A visitor row and its link event, as the link path writes them (`EventLog.link_event`)."""
    cookie = f"{via}-cookie-{n}"
    visitor = {"cookie_id": cookie, "user_agent": "Mozilla/5.0 微信", "first_seen_at": NOW, "contact_id": None}
    ev = {"type": "open", "contact_id": None, "cookie": cookie, "share_id": None, "item_id": None, "version_id": None,
          "rep_userid": "rep1", "channel_id": None, "props": {"gated": False, "标题": "白皮书", "n": n},
          "occurred_at": NOW, "received_at": NOW + dt.timedelta(microseconds=n), "idempotency_key": f"{via}:{n}"}
    return visitor, ev


async def _fast_and_orm(engine: Any) -> list[str]:
    """Five link events (with their visitors) through the group commit, then five through SQLAlchemy;
    returns the statements SQLAlchemy executed while the group commit wrote."""
    log = EventLog(engine)
    through_sqlalchemy: list[str] = []
    listen = (engine.sync_engine, "before_cursor_execute", lambda _c, _cur, statement, *_a: through_sqlalchemy.append(statement))
    writer = BatchWriter(engine, name="test")
    event.listen(*listen)
    try:
        await asyncio.gather(*(
            writer.write_rows([(0, log._visitor, _link_event_params(n, "fast")[0]),
                               (1, log._event_with_visitor, _link_event_params(n, "fast")[1])])
            for n in range(5)
        ))
        await writer.close()
    finally:
        event.remove(*listen)
    async with engine.begin() as conn:
        await conn.execute(log._visitor, [_link_event_params(n, "orm")[0] for n in range(5)])
        await conn.execute(log._event_with_visitor, [_link_event_params(n, "orm")[1] for n in range(5)])
    return through_sqlalchemy


async def test_the_group_commit_stores_what_sqlalchemy_would(sqlite_url: str) -> None:
    """Link events through the one-trip batch and the same statements through SQLAlchemy: the stored
    columns (dates, JSON, defaults, the visitor subquery) must be byte for byte the same."""
    engine = create_engine(make_settings(sqlite_url).database)
    try:
        assert not [s for s in await _fast_and_orm(engine) if "INSERT" in s]  # the one-trip path wrote them
    finally:
        await engine.dispose()
    path = sqlite_url.split("///", 1)[1]
    columns = "type, events.contact_id, v.user_agent, v.first_seen_at, props, occurred_at, received_at, processed, rep_userid"
    rows = _raw_rows(path, f"SELECT idempotency_key, {columns} FROM events JOIN visitors v ON v.id = events.visitor_id ORDER BY events.id")
    fast = [r[1:] for r in rows if r[0].startswith("fast:")]
    orm = [r[1:] for r in rows if r[0].startswith("orm:")]
    assert len(fast) == len(orm) == 5
    assert fast == orm
    assert fast[1][5] == "2026-03-02 09:30:15.123456" and fast[1][6] == "2026-03-02 09:30:15.123457" and fast[1][7] == 0
    assert json.loads(fast[1][4]) == {"gated": False, "标题": "白皮书", "n": 1}


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_group_commit_on_postgres_stores_what_sqlalchemy_would(db_url: str) -> None:
    """PostgreSQL's one-transaction batch (raw asyncpg executemany, rows converted by us) against the
    same statements through SQLAlchemy: every stored column the same."""
    engine = create_engine(make_settings(db_url).database)
    try:
        assert not [s for s in await _fast_and_orm(engine) if "INSERT" in s]  # the batch went past SQLAlchemy
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(Event.idempotency_key, Event.type, Event.contact_id, Visitor.user_agent, Visitor.first_seen_at, Event.props,
                       Event.occurred_at, Event.received_at, Event.processed, Event.rep_userid)
                .join(Visitor, Visitor.id == Event.visitor_id).order_by(Event.id)
            )).all()
    finally:
        await engine.dispose()
    fast = [tuple(r[1:]) for r in rows if r[0].startswith("fast:")]
    orm = [tuple(r[1:]) for r in rows if r[0].startswith("orm:")]
    assert len(fast) == len(orm) == 5
    assert fast == orm
    assert fast[1][5] == NOW and fast[1][6] == NOW + dt.timedelta(microseconds=1) and fast[1][7] is False
    assert fast[1][4] == {"gated": False, "标题": "白皮书", "n": 1}


async def test_a_failing_row_fails_its_caller_only(db_url: str) -> None:
    """A batch that fails is written again row by row: the bad row's caller gets the error, the others
    are stored and told so (on either database)."""
    engine = create_engine(make_settings(db_url).database)
    writer = BatchWriter(engine, name="test")
    stmt = insert(Lease)
    try:
        results = await asyncio.gather(
            *(writer.write(stmt, {"name": f"ok{n}", "owner": "o", "locked_until": T0}) for n in range(3)),
            writer.write(stmt, {"name": "bad", "owner": None, "locked_until": T0}),  # NOT NULL
            return_exceptions=True,
        )
        await writer.close()
        assert results[:3] == [None, None, None]
        assert isinstance(results[3], IntegrityError)
        async with engine.connect() as conn:
            assert (await conn.scalars(select(Lease.name).order_by(Lease.name))).all() == ["ok0", "ok1", "ok2"]
    finally:
        await engine.dispose()


async def test_the_group_commit_takes_its_turn_at_the_write_gate(sqlite_url: str) -> None:
    """A unit of work of this process holds the write lock across awaits; the group commit's batch waits
    for it at the gate instead of meeting SQLite's lock (here with no busy timeout: it would fail)."""
    engine = engine_without_busy_wait(sqlite_url)
    sessions = session_factory(engine)
    writer = BatchWriter(engine, name="test")
    order: list[str] = []
    try:
        async with sessions() as session, session.begin():
            session.add(Lease(name="unit", owner="o", locked_until=T0))
            await session.flush()
            write = asyncio.ensure_future(writer.write(insert(Lease), {"name": "batch", "owner": "o", "locked_until": T0}))
            write.add_done_callback(lambda _f: order.append("batch"))
            await asyncio.sleep(0.05)
            assert not write.done()
            order.append("unit")
        await write
        await writer.close()
        assert order == ["unit", "batch"]
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(Lease)) == 2
            assert await conn.scalar(select(func.count()).select_from(Event)) == 0
    finally:
        await engine.dispose()


async def test_rows_needing_python_side_defaults_go_through_sqlalchemy(sqlite_url: str) -> None:
    """reps.role, source, active and created_at are filled in by SQLAlchemy per row (Python-side
    defaults): the one-trip path leaves such statements to it rather than writing NULLs."""
    from bot.models import Rep

    engine = create_engine(make_settings(sqlite_url).database)
    writer = BatchWriter(engine, name="test")
    try:
        await asyncio.gather(*(writer.write(insert(Rep), {"userid": f"r{n}", "name": f"代表{n}"}) for n in range(3)))
        await writer.close()
        async with engine.connect() as conn:
            rows = (await conn.execute(select(Rep.userid, Rep.role, Rep.source, Rep.active, Rep.created_at).order_by(Rep.userid))).all()
    finally:
        await engine.dispose()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(f"r{n}", "rep", "config", True) for n in range(3)]
    assert all(r[4] is not None for r in rows)


async def test_executemany_in_a_transaction_matches_sqlalchemy(sqlite_url: str) -> None:
    """bot.batch.executemany (the nightly decay's ledger rows and score updates): the rows as
    `conn.execute` writes them, inside the caller's transaction (a rollback takes them back)."""
    from bot.batch import executemany
    from bot.models import Contact, ScoreEntry
    from bot.ledger import ledger_insert
    from bot.scoring.jobs import _SCORES

    engine = create_engine(make_settings(sqlite_url).database)
    at = dt.datetime(2026, 5, 6, 7, 8, 9, 101112, tzinfo=dt.timezone.utc)
    _LEDGER_INSERT = ledger_insert("sqlite")

    def ledger(contact_id: int, tag: str) -> list[dict[str, Any]]:
        # The last two rows are ticks of one quiet spell: the second adds to the first's row.
        return [{"contact_id": contact_id, "model": "default", "rule": "decay", "points": -1.25 * n, "event_id": None,
                 "reason": f"{tag} 衰减 {n}", "at": at, "quiet_since": None if n == 1 else dt.date(2026, 3, n)} for n in (1, 2, 2)]

    try:
        async with engine.begin() as conn:
            for ext in ("wmA", "wmB"):
                await conn.execute(insert(Contact), {"external_userid": ext, "profile": {}, "created_at": at, "updated_at": at})
            a, b = (await conn.scalars(select(Contact.id).order_by(Contact.id))).all()
            await executemany(conn, _LEDGER_INSERT, ledger(a, "x"))
            await conn.execute(_LEDGER_INSERT, ledger(b, "x"))
            await executemany(conn, _SCORES.stmt, [{"b_id": a, "b_score": 12.5, "b_temperature": "warm", "b_updated_at": at}])
            await conn.execute(_SCORES.stmt, [{"b_id": b, "b_score": 12.5, "b_temperature": "warm", "b_updated_at": at}])
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await executemany(conn, _LEDGER_INSERT, ledger(a, "rolled back"))
                await executemany(conn, _LEDGER_INSERT, [{**ledger(a, "bad")[0], "model": None}])  # NOT NULL
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(ScoreEntry).where(ScoreEntry.reason.like("rolled%"))) == 0
    finally:
        await engine.dispose()
    path = sqlite_url.split("///", 1)[1]
    led = _raw_rows(path, "SELECT contact_id, model, rule, points, event_id, reason, at, quiet_since FROM score_ledger ORDER BY id")
    assert [r[1:] for r in led if r[0] == a] == [r[1:] for r in led if r[0] == b] and len(led) == 4
    assert led[0][6] == "2026-05-06 07:08:09.101112"
    assert [(r[3], r[7]) for r in led if r[0] == a] == [(-1.25, None), (-5.0, "2026-03-02")]
    contacts = _raw_rows(path, "SELECT score, temperature, updated_at FROM contacts ORDER BY id")
    assert contacts[0] == contacts[1] == (12.5, "warm", "2026-05-06 07:08:09.101112")


async def test_the_group_commit_takes_a_connection_before_the_gate(sqlite_url: str) -> None:
    """One pooled connection, held by a unit of work that has not begun yet. The group commit must wait
    for the connection without holding the gate, or the unit of work's BEGIN would wait for the gate
    while the group commit waits for its connection (a deadlock until the pool timeout)."""
    settings = make_settings(sqlite_url, database={"url": sqlite_url, "pool_size": 1, "max_overflow": 0, "pool_timeout": 3})
    engine = create_engine(settings.database)
    writer = BatchWriter(engine, name="test")
    try:
        started = asyncio.get_running_loop().time()
        async with engine.connect() as conn:  # the only connection; no transaction yet
            write = asyncio.ensure_future(writer.write(insert(Lease), {"name": "batch", "owner": "o", "locked_until": T0}))
            await asyncio.sleep(0.05)  # the group commit is waiting for a connection now
            await conn.execute(insert(Lease), {"name": "unit", "owner": "o", "locked_until": T0})  # BEGIN at the gate
            await conn.commit()
        await asyncio.wait_for(write, 2)
        await writer.close()
        assert asyncio.get_running_loop().time() - started < 2
        async with engine.connect() as conn:
            assert (await conn.scalars(select(Lease.name).order_by(Lease.name))).all() == ["batch", "unit"]
    finally:
        await engine.dispose()


def test_repeated_values_are_converted_once_to_the_same_rows() -> None:
    """prepared_statement(..., repeated=True) (the nightly jobs' rows, which share their clock): the
    same positional rows as without it, each distinct value converted once, JSON values as well."""
    from sqlalchemy.dialects import sqlite

    import bot.batch as batch
    from bot.ledger import ledger_insert

    dialect = sqlite.dialect()
    shanghai = dt.timezone(dt.timedelta(hours=8))
    rows = [{"contact_id": n, "model": "default", "rule": "decay", "points": -0.5 * n, "event_id": None, "reason": "r",
             "at": T0 if n % 2 else T0.astimezone(shanghai), "quiet_since": dt.date(2026, 3, 1 + n % 3)} for n in range(1, 2000)]
    plain = batch.prepared_statement(ledger_insert("sqlite"), tuple(rows[0]), dialect)
    once = batch.prepared_statement(ledger_insert("sqlite"), tuple(rows[0]), dialect, repeated=True)
    assert plain is not None and once is not None and plain is not once
    assert [once.row(r) for r in rows] == [plain.row(r) for r in rows]
    assert once.row(rows[0])[6] == T0.replace(tzinfo=None).isoformat(" ", "microseconds")  # the same instant in any zone
    events = [{"type": "open", "contact_id": 1, "visitor_id": None, "share_id": None, "item_id": None, "version_id": None,
               "rep_userid": None, "channel_id": None, "props": {"n": n % 2}, "occurred_at": T0 + dt.timedelta(seconds=n),
               "received_at": T0, "idempotency_key": None, "processed": False} for n in range(3000)]  # past the memory's bound
    plain = batch.prepared_statement(insert(Event), tuple(events[0]), dialect)
    once = batch.prepared_statement(insert(Event), tuple(events[0]), dialect, repeated=True)
    assert [once.row(r) for r in events] == [plain.row(r) for r in events]
    with pytest.raises(ValueError):
        once.row({**events[0], "received_at": T0.replace(tzinfo=None)})  # a naive time is still refused


@examples(max_examples=300, deadline=None)
@given(
    at=st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                    timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=8)),
                                               dt.timezone(dt.timedelta(hours=-5, minutes=-30)), ZoneInfo("Asia/Shanghai"), ZoneInfo("UTC")])),
)
def test_the_timestamp_shortcuts_give_sqlalchemys_text(at: dt.datetime) -> None:
    """On SQLite, bound timestamps and dates skip SQLAlchemy's processors (bot.batch._bind_processor):
    for aware times in any zone (UTCDateTime), naive times (DateTime), dates (Date), the text is the one
    SQLAlchemy's own processors give, and a naive time for a UTCDateTime column is still refused."""
    from sqlalchemy import Date, DateTime
    from sqlalchemy.dialects import sqlite

    import bot.batch as batch
    from bot.models import UTCDateTime

    dialect = sqlite.dialect()
    for type_, value in ((UTCDateTime(), at), (DateTime(), at.replace(tzinfo=None)), (Date(), at.date())):
        fast = batch._bind_processor(type_, dialect)
        slow = type_.dialect_impl(dialect).bind_processor(dialect)
        assert fast is not slow  # the shortcut is in use
        assert fast(value) == slow(value)
    with pytest.raises(ValueError):
        batch._bind_processor(UTCDateTime(), dialect)(at.replace(tzinfo=None))


def test_a_shortcut_that_disagrees_with_sqlalchemy_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check when a statement is prepared: a shortcut whose text differs from SQLAlchemy's on the
    sample values (here, one that drops the microseconds) is left out and SQLAlchemy's processor runs."""
    from sqlalchemy.dialects import sqlite

    import bot.batch as batch
    from bot.models import UTCDateTime

    dialect = sqlite.dialect()
    in_use = batch._bind_processor(UTCDateTime(), dialect)
    wrong = lambda value: in_use(value)[:19]  # noqa: E731
    monkeypatch.setitem(batch._SQLITE_SHORTCUTS, UTCDateTime, lambda slow: (wrong, batch._utc_shortcut(slow)[1]))
    chosen = batch._bind_processor(UTCDateTime(), dialect)
    assert chosen is not wrong
    assert chosen(T0) == T0.replace(tzinfo=None).isoformat(" ", "microseconds")
