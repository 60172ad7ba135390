"""Writing the score ledger: the rows of scoring entries, and the one statement every writer uses.

A decay entry belongs to a quiet spell (`Entry.quiet_since`); the ledger keeps one row per spell.
`ledger_insert` adds a tick to its spell's row when the row exists (INSERT … ON CONFLICT on the
partial unique index of `score_ledger`, see bot/models.py), so the real-time scorer, the nightly job
and a rescore all end with the same rows whichever of them wrote a spell's ticks.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, Iterable

from sqlalchemy import Float, Numeric, cast, func
from sqlalchemy.dialects import postgresql, sqlite

from bot.models import ScoreEntry
from bot.scoring.engine import Entry, merge_spells


@functools.cache
def ledger_insert(dialect_name: str) -> Any:
    """INSERT of ledger rows for the dialect; a decay row whose spell has a row already adds its
    points to it and moves its time and reason to the latest tick."""
    table = ScoreEntry.__table__
    stmt = (postgresql if dialect_name == "postgresql" else sqlite).insert(table)
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
