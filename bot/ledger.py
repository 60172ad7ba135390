"""Writing the score ledger: the rows of scoring entries, and the one statement every writer uses.

A decay entry belongs to a quiet spell (`Entry.quiet_since`); the ledger keeps one row per spell.
`ledger_insert` adds a tick to its spell's row when the row exists (INSERT … ON CONFLICT on the
partial unique index of `score_ledger`, see bot/models.py), so the real-time scorer, the nightly job
and a rescore all end with the same rows whichever of them wrote a spell's ticks.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Any, Iterable

from sqlalchemy import Float, Numeric, cast, column, func, select, table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.batch import executemany
from bot.models import ScoreEntry
from bot.scoring.engine import Entry, merge_spells


@functools.cache
def ledger_insert(dialect_name: str) -> Any:
    """INSERT of ledger rows for the dialect; a decay row whose spell has a row already adds its
    points to it and moves its time and reason to the latest tick."""
    return _merging_spells((postgresql if dialect_name == "postgresql" else sqlite).insert(ScoreEntry.__table__), dialect_name)


def _merging_spells(stmt: Any, dialect_name: str) -> Any:
    table = ScoreEntry.__table__
    total: Any = table.c.points + stmt.excluded.points
    # Rounded to the cent, as merge_spells and a replay round: -23.83, not -23.830000000000002.
    if dialect_name == "postgresql":  # round(double precision, int) does not exist there
        total = cast(func.round(cast(total, Numeric), 2), Float)
    else:
        total = func.round(total, 2)
    return stmt.on_conflict_do_update(
        index_elements=["contact_id", "model", "quiet_since"],
        index_where=table.c.quiet_since.is_not(None),
        set_={"points": total, "at": stmt.excluded.at, "reason": stmt.excluded.reason},
    )


def ledger_rows(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Rows for `ledger_insert`, the decay entries of one spell in one row (`merge_spells`): fewer
    rows to write. (Rows of one spell in one executemany are also right: each adds to the row the
    one before wrote.)"""
    return [
        {"contact_id": e.contact_id, "model": e.model, "rule": e.rule, "points": e.points, "event_id": e.event_id,
         "reason": e.reason[:255], "at": e.at,
         "quiet_since": None if e.quiet_since is None else dt.date.fromordinal(e.quiet_since)}
        for e in merge_spells(list(entries))
    ]


# PostgreSQL: rows bound for the ledger, COPYed here first (one per connection, emptied at commit).
_LOAD = "ledger_load"
_LOAD_COLUMNS = ("seq", "contact_id", "model", "rule", "points", "event_id", "reason", "at", "quiet_since")
_CREATE_LOAD = (f"CREATE TEMP TABLE IF NOT EXISTS {_LOAD} (seq integer, contact_id bigint, model varchar(64), "
                "rule varchar(128), points double precision, event_id bigint, reason varchar(255), at timestamp, "
                "quiet_since date) ON COMMIT DELETE ROWS")
_load = table(_LOAD, *(column(name) for name in _LOAD_COLUMNS))
_FROM_LOAD = _merging_spells(
    postgresql.insert(ScoreEntry.__table__).from_select(
        list(_LOAD_COLUMNS[1:]), select(*(_load.c[name] for name in _LOAD_COLUMNS[1:])).order_by(_load.c.seq)
    ),
    "postgresql",
)


async def insert_merged_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """`ledger_insert` for many rows with at most one per quiet spell (`ledger_rows` of distinct
    contacts, as a rescore writes), in the connection's transaction; ids follow the rows' order.

    On PostgreSQL the rows are COPYed into a temporary table and go in with one INSERT … SELECT (a
    spell that has a row already still adds to it): asyncpg's executemany sends a bound statement per
    row, and SQLAlchemy builds each row's parameters, more than half of a rescore's time there. One
    INSERT cannot touch a row twice, hence at most one row per spell. Elsewhere: `executemany`."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        await executemany(conn, ledger_insert(conn.dialect.name), rows)
        return
    driver = (await conn.get_raw_connection()).driver_connection
    await driver.execute(_CREATE_LOAD)
    await driver.copy_records_to_table(_LOAD, columns=_LOAD_COLUMNS, records=[
        (n, r["contact_id"], r["model"], r["rule"], r["points"], r["event_id"], r["reason"],
         r["at"].astimezone(dt.timezone.utc).replace(tzinfo=None), r["quiet_since"])
        for n, r in enumerate(rows)
    ])
    await conn.execute(_FROM_LOAD)
    await driver.execute(f"TRUNCATE {_LOAD}")


# A ledger reason ends with that entry's points ("点击「预约演示」 +30", as the scorer writes it).
_POINTS_SUFFIX = re.compile(r"\s[+-]\d+(?:\.\d+)?$")


def reason_label(reason: str) -> str:
    """The reason without the entry's points, for a page that shows them in a column of their own."""
    return _POINTS_SUFFIX.sub("", reason)
