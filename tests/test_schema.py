"""The migrations build exactly the schema the models describe, on SQLite and on PostgreSQL, and there
is one Alembic head (two heads would make `python -m bot migrate` refuse to run)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from bot.db import _alembic_config
from bot.models import Base


def test_one_head() -> None:
    script = ScriptDirectory.from_config(_alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1, script.get_heads()


async def _drift(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    finally:
        await engine.dispose()
    return [d for d in diff if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]


async def test_sqlite_schema_matches_the_models(sqlite_template: Path) -> None:
    assert await _drift(f"sqlite+aiosqlite:///{sqlite_template}") == []


@pytest.mark.postgres
async def test_postgres_schema_matches_the_models(pg_database: str) -> None:
    assert await _drift(pg_database) == []


def test_upgrade_keeps_daily_decay_rows_and_the_next_tick_opens_a_spell(tmp_path: Path) -> None:
    """0008 adds `score_ledger.quiet_since` without copying the table: per-day decay rows written
    before it stay as they were (the score is still their sum), and spells are unique per contact,
    model and day of last engagement."""
    import sqlite3

    from bot.db import migrate_sync

    path = tmp_path / "old.db"
    migrate_sync(f"sqlite+aiosqlite:///{path}", "0007")
    con = sqlite3.connect(path)
    con.execute("INSERT INTO contacts (id, name, company, title, region, industry, company_size, persona, stage, temperature, "
                "score, profile, created_at, updated_at) VALUES (1, '', '', '', '', '', '', '', 'new', 'cold', 10.0, '{}', "
                "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')")
    con.executemany("INSERT INTO score_ledger (contact_id, model, rule, points, reason, at) VALUES (1, 'default', 'decay', ?, ?, ?)",
                    [(-0.5, "连续31天无互动，行为分衰减 -0.5", "2026-02-01 16:00:00.000000"),
                     (-0.25, "连续32天无互动，行为分衰减 -0.25", "2026-02-02 16:00:00.000000")])
    con.commit()
    con.close()
    migrate_sync(f"sqlite+aiosqlite:///{path}")
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT points, quiet_since FROM score_ledger ORDER BY id").fetchall() == [(-0.5, None), (-0.25, None)]
        spell = ("INSERT INTO score_ledger (contact_id, model, rule, points, reason, at, quiet_since) "
                 "VALUES (1, 'default', 'decay', -0.2, '', '2026-02-03 16:00:00.000000', '2026-01-01')")
        con.execute(spell)
        with pytest.raises(sqlite3.IntegrityError):
            con.execute(spell)  # one row per spell
    finally:
        con.close()


def _round_trip(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every migration done one at a time from an empty database up to the head, then undone one at a
    time down to base, then all done again. Returns the schema after each step up and after each step
    down, by revision; base must leave no table of ours behind."""
    import asyncio

    from alembic import command

    config = _alembic_config(url)
    revisions = [rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()][::-1]  # base first
    up: dict[str, Any] = {}
    down: dict[str, Any] = {}
    for revision in revisions:
        command.upgrade(config, revision)
        up[revision] = asyncio.run(_shape(url))
    for revision in revisions[-2::-1]:
        command.downgrade(config, revision)
        down[revision] = asyncio.run(_shape(url))
    command.downgrade(config, "base")
    assert set(asyncio.run(_shape(url))) <= {"alembic_version"}
    command.upgrade(config, "head")
    return up, down


async def _shape(url: str) -> dict[str, Any]:
    """Each table's columns, primary key, indexes, unique constraints and foreign keys, as the database
    reports them."""
    from sqlalchemy import inspect

    def shape(conn: Any) -> dict[str, Any]:
        db = inspect(conn)
        return {
            table: {
                "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in db.get_columns(table)),
                "pk": db.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in db.get_indexes(table)),
                "unique": sorted(tuple(u["column_names"]) for u in db.get_unique_constraints(table)),
                "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                              for f in db.get_foreign_keys(table)),
            }
            for table in db.get_table_names()
        }

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(shape)
    finally:
        await engine.dispose()


def _check_round_trip(up: dict[str, Any], down: dict[str, Any]) -> None:
    assert len(up) == len(down) + 1 >= 7
    for revision, shape in down.items():
        assert shape == up[revision], f"downgrading to {revision} does not give back its schema"


async def test_every_migration_downgrades_and_upgrades_again_on_sqlite(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite+aiosqlite:///{tmp_path / 'round.db'}"
    _check_round_trip(*await asyncio.to_thread(_round_trip, url))
    assert await _drift(url) == []


@pytest.mark.postgres
def test_every_migration_downgrades_and_upgrades_again_on_postgres() -> None:
    import asyncio

    from tests.conftest import empty_pg_database

    with empty_pg_database("beacon_round") as url:
        _check_round_trip(*_round_trip(url))
        assert asyncio.run(_drift(url)) == []


@pytest.mark.postgres
def test_the_rep_index_is_built_while_links_keep_recording_events_on_postgres() -> None:
    """0010 builds its index over `events` CONCURRENTLY: while the build waits for a transaction that
    was writing events when it started, and while it reads the table, new events still go in (a plain
    CREATE INDEX would queue them behind it: link opens and callbacks would stall for the build)."""
    import asyncio

    from bot.db import migrate_sync
    from tests.conftest import empty_pg_database

    with empty_pg_database("beacon_concurrent") as url:
        migrate_sync(url, "0009")
        asyncio.run(_events_go_in_during_the_build(url))


async def _events_go_in_during_the_build(url: str) -> None:
    import asyncio

    import asyncpg

    from bot.db import migrate_sync

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    insert = "INSERT INTO events (type, props, occurred_at, received_at, processed) VALUES ('open', '{}', now(), now(), false)"
    holder, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        open_tx = holder.transaction()
        await open_tx.start()
        await holder.execute(insert)  # a transaction writing events when the build starts
        build = asyncio.ensure_future(asyncio.to_thread(migrate_sync, url))
        waiting = 0
        for _ in range(200):
            waiting = await writer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'CREATE INDEX%' "
                                            "AND wait_event_type = 'Lock'")
            if waiting or build.done():
                break
            await asyncio.sleep(0.05)
        assert waiting == 1 and not build.done()  # the build waits for the open transaction
        await writer.execute("SET statement_timeout = '2s'")
        await writer.execute(insert)  # not queued behind the build
        await open_tx.commit()
        await asyncio.wait_for(build, 60)
        assert await writer.fetchval("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_events_rep_type_occurred'::regclass")
        assert await writer.fetchval("SELECT count(*) FROM events") == 2
    finally:
        await holder.close()
        await writer.close()


# (contact, stage now, its stage_history moves) -> the reach 0011 fills in
_REACH_CASES = [
    (1, "new", [], 0),
    (2, "mql", [("new", "nurturing"), ("nurturing", "mql")], 2),
    (3, "invalid", [("new", "nurturing"), ("nurturing", "mql"), ("mql", "invalid")], 2),
    (4, "dormant", [("new", "customer"), ("customer", "dormant")], 4),
    (5, "sql", [], 3),  # set by hand before stage_history was kept: the current stage counts
    (6, "invalid", [], 0),
]


async def _reach_after_0011(url: str) -> dict[int, int]:
    from sqlalchemy import text

    from bot.db import migrate

    await migrate(url, "0010")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for cid, stage, moves, _ in _REACH_CASES:
                await conn.execute(text(
                    "INSERT INTO contacts (id, name, company, title, region, industry, company_size, persona, stage, temperature, "
                    "score, profile, created_at, updated_at) VALUES (:id, '', '', '', '', '', '', '', :stage, 'cold', 0, '{}', "
                    ":at, :at)"), {"id": cid, "stage": stage, "at": dt.datetime(2026, 1, 1)})  # fmt: skip
                for a, b in moves:
                    await conn.execute(text("INSERT INTO stage_history (contact_id, from_stage, to_stage, by, reason, at) "
                                            "VALUES (:c, :a, :b, 'rule:test', '', :at)"), {"c": cid, "a": a, "b": b, "at": dt.datetime(2026, 1, 2)})
        await migrate(url)
        async with engine.connect() as conn:
            return dict((await conn.execute(text("SELECT id, reach FROM contacts"))).all())  # type: ignore[arg-type]
    finally:
        await engine.dispose()


async def test_0011_fills_reach_from_the_stage_and_its_history_on_sqlite(tmp_path: Path) -> None:
    """How far each contact got, as the funnels counted it from stage_history before 0011: the
    furthest of its current stage and every stage it moved to; invalid and dormant are no step."""
    reach = await _reach_after_0011(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    assert reach == {cid: want for cid, _, _, want in _REACH_CASES}


@pytest.mark.postgres
def test_0011_fills_reach_from_the_stage_and_its_history_on_postgres() -> None:
    import asyncio

    from tests.conftest import empty_pg_database

    with empty_pg_database("beacon_reach") as url:
        reach = asyncio.run(_reach_after_0011(url))
    assert reach == {cid: want for cid, _, _, want in _REACH_CASES}


# (contact, external_userid, name, merged into, erased) -> whether 0015 marks its WeCom profile due
_DUE_CASES = [
    (1, "wmKnownById", "", None, False, True),  # met through a share before Beacon fetched profiles
    (2, "wmNamed", "王总", None, False, False),  # the contact-added callback named it
    (3, None, "", None, False, False),  # a web visitor: no WeCom id to ask about
    (4, "wmMerged", "", 1, False, False),
    (5, "wmErased", "", None, True, False),
]


async def _due_after_0015(url: str) -> dict[int, bool]:
    from sqlalchemy import text

    from bot.db import migrate

    await migrate(url, "0014")
    engine = create_async_engine(url)
    at = dt.datetime(2026, 1, 1)
    try:
        async with engine.begin() as conn:
            for cid, external, name, merged, erased, _ in _DUE_CASES:
                await conn.execute(text(
                    "INSERT INTO contacts (id, external_userid, name, company, title, region, industry, company_size, persona, "
                    "stage, temperature, score, profile, merged_into_id, erased_at, created_at, updated_at) VALUES (:id, :ext, "
                    ":name, '', '', '', '', '', '', 'new', 'cold', 0, '{}', :merged, :erased, :at, :at)"),
                    {"id": cid, "ext": external, "name": name, "merged": merged, "erased": at if erased else None, "at": at})  # fmt: skip
        await migrate(url)
        async with engine.connect() as conn:
            due = (await conn.execute(text("SELECT id, profile_due_at FROM contacts"))).all()
        return {cid: value is not None for cid, value in due}
    finally:
        await engine.dispose()


async def test_0015_marks_the_contacts_known_only_by_their_wecom_id_on_sqlite(tmp_path: Path) -> None:
    due = await _due_after_0015(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    assert due == {cid: want for cid, *_, want in _DUE_CASES}


@pytest.mark.postgres
def test_0015_marks_the_contacts_known_only_by_their_wecom_id_on_postgres() -> None:
    import asyncio

    from tests.conftest import empty_pg_database

    with empty_pg_database("beacon_due") as url:
        due = asyncio.run(_due_after_0015(url))
    assert due == {cid: want for cid, *_, want in _DUE_CASES}
