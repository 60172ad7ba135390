"""The migrations build exactly the schema the models describe, on SQLite and on PostgreSQL, and there
is one Alembic head (two heads would make `python -m bot migrate` refuse to run)."""

from __future__ import annotations

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
