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
