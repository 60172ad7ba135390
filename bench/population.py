"""A company's worth of contacts for the benchmarks, written straight to SQLite in a few set-based inserts.

`add_contacts(db, 100_000)` appends contacts (owned by the bench reps, spread over the lead stages,
each with its external_userid identity) to a migrated SQLite file with sqlite3 `executemany`: about a
second for 100k. With `quiet` and `customers` it also shapes what the nightly jobs work on: contacts
whose last interaction is 40-90 days old (two old, processed behavior events each, with the ledger
rows and score that real-time scoring and the decay up to yesterday gave them, made by the project's
own Scorer: tonight's decay run has one tick per contact to add) and customers whose last payment is
older or younger than the dormancy window.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

from bench.store import sqlite_ts

STAGES = [("new", 60), ("nurturing", 20), ("mql", 8), ("sql", 2)]


def _contact_rows(n: int, first: int, rng: random.Random, now: dt.datetime, owners: tuple[str, ...], prefix: str,
                  quiet: float, customers: float) -> tuple[list[tuple[Any, ...]], list[tuple[int, dt.datetime]]]:
    """The contacts' rows (CONTACT_COLUMNS, times as aware datetimes) and (id, last activity) of the quiet."""
    stages = [s for s, w in STAGES for _ in range(w)]
    contacts: list[tuple[Any, ...]] = []
    activity: list[tuple[int, dt.datetime]] = []
    for i in range(n):
        created = now - dt.timedelta(days=rng.uniform(100, 700))
        stage, last_activity, last_payment = rng.choice(stages), None, None
        r = rng.random()
        if r < customers:
            stage = "customer"
            # half past the 548-day window of [lifecycle] dormant_after_days, half within it
            last_payment = now - dt.timedelta(days=rng.uniform(560, 700) if rng.random() < 0.5 else rng.uniform(1, 500))
        elif r < customers + quiet:
            last_activity = now - dt.timedelta(days=rng.uniform(40, 90))
            activity.append((first + i, last_activity))
        contacts.append((
            first + i, f"{prefix}{i:06d}", f"联系人{i}", f"公司{i % 5000}", "经理" if i % 4 == 0 else "", "", "", "", "", None,
            "13800000000" if i % 3 == 0 else None, json.dumps({}), owners[i % len(owners)], stage, "cold", 0.0,
            last_activity, last_payment, created, created,
        ))  # fmt: skip
    return contacts, activity


CONTACT_COLUMNS = (
    "id", "external_userid", "name", "company", "title", "region", "industry", "company_size", "persona", "email", "phone",
    "profile", "owner_userid", "stage", "temperature", "score", "last_activity_at", "last_payment_at", "created_at",
    "updated_at",
)  # fmt: skip
_TIMES = [CONTACT_COLUMNS.index(c) for c in ("last_activity_at", "last_payment_at", "created_at", "updated_at")]


def add_contacts(
    db: Path,
    n: int,
    *,
    owners: tuple[str, ...] = ("rep1", "rep2"),
    quiet: float = 0.0,
    customers: float = 0.0,
    prefix: str = "wmPop",
    seed: int = 1,
    now: dt.datetime | None = None,
) -> tuple[int, int]:
    """Append `n` contacts; returns (first id, last id). `quiet`: the share with old activity (events to
    decay); `customers`: the share that are customers, half of them past the dormancy window."""
    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.timezone.utc)
    con = sqlite3.connect(db)
    try:
        for userid in owners:
            con.execute(
                "INSERT OR IGNORE INTO reps (userid, name, role, region, source, active, created_at) VALUES (?, ?, 'rep', '', 'config', 1, ?)",
                (userid, userid, sqlite_ts(now)),
            )
        first = (con.execute("SELECT COALESCE(MAX(id), 0) FROM contacts").fetchone()[0]) + 1
        rows, activity = _contact_rows(n, first, rng, now, owners, prefix, quiet, customers)
        contacts = [tuple(sqlite_ts(v) if i in _TIMES and v is not None else v for i, v in enumerate(row)) for row in rows]
        con.executemany(
            f"INSERT INTO contacts ({', '.join(CONTACT_COLUMNS)}) VALUES ({', '.join('?' * len(CONTACT_COLUMNS))})", contacts
        )
        last = first + n - 1
        con.executemany(
            "INSERT INTO identities (contact_id, kind, value, created_at) VALUES (?, 'external_userid', ?, ?)",
            [(row[0], row[1], row[-2]) for row in contacts],
        )
        events = []
        for contact_id, at in activity:
            for kind, props, back in (("open", {}, 2.0), ("read", {"depth": 75}, 0.0)):
                when = sqlite_ts(at - dt.timedelta(hours=back))
                events.append((kind, contact_id, json.dumps(props), when, when))
        con.executemany(
            "INSERT INTO events (type, contact_id, props, occurred_at, received_at, processed) VALUES (?, ?, ?, ?, ?, 1)", events
        )
        if activity:
            _score_history(con, first, last, now - dt.timedelta(days=1))
        con.commit()
    finally:
        con.close()
    return first, last


def add_contacts_postgres(dsn: str, n: int, *, owners: tuple[str, ...] = ("rep1", "rep2"), prefix: str = "wmPop",
                          seed: int = 1, now: dt.datetime | None = None) -> tuple[int, int]:
    """`add_contacts` for a PostgreSQL database (with COPY): the contacts and their identities, no
    activity history (the nightly benchmark, which needs one, runs on SQLite)."""
    import asyncio

    import asyncpg

    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.timezone.utc)

    def naive(value: Any) -> Any:  # bot.models.UTCDateTime on PostgreSQL: naive UTC
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if isinstance(value, dt.datetime) else value

    async def go() -> tuple[int, int]:
        con = await asyncpg.connect(dsn)
        try:
            async with con.transaction():
                await con.executemany(
                    "INSERT INTO reps (userid, name, role, region, source, active, created_at) "
                    "VALUES ($1, $1, 'rep', '', 'config', true, $2) ON CONFLICT DO NOTHING",
                    [(userid, naive(now)) for userid in owners],
                )
                first = await con.fetchval("SELECT COALESCE(MAX(id), 0) FROM contacts") + 1
                rows, _activity = _contact_rows(n, first, rng, now, owners, prefix, 0.0, 0.0)
                contacts = [tuple(naive(v) for v in row) for row in rows]
                await con.copy_records_to_table("contacts", records=contacts, columns=list(CONTACT_COLUMNS))
                await con.copy_records_to_table(
                    "identities", records=[(row[0], "external_userid", row[1], row[-2]) for row in contacts],
                    columns=["contact_id", "kind", "value", "created_at"],
                )
                await con.execute("SELECT setval(pg_get_serial_sequence('contacts', 'id'), (SELECT MAX(id) FROM contacts))")
            return first, first + n - 1
        finally:
            await con.close()

    return asyncio.run(go())


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def _score_history(con: sqlite3.Connection, first: int, last: int, until: dt.datetime) -> None:
    """Ledger rows, score and temperature of the contacts with events in [first, last], as real-time
    scoring and the nightly decay under the default rules left them by `until` (a replay, as `ensure`
    does): the next decay run has one night of ticks to add."""
    from types import SimpleNamespace

    from bot.config import Settings
    from bot.scoring.engine import ScoredEvent, Scorer
    from bot.ledger import ledger_rows
    from bot.scoring.service import profile_of
    from bot.scoring.stages import temperature

    scorer = Scorer(Settings().scoring)
    by_contact: dict[int, list[ScoredEvent]] = {}
    for event_id, contact_id, kind, occurred_at, props in con.execute(
        "SELECT id, contact_id, type, occurred_at, props FROM events WHERE contact_id BETWEEN ? AND ? AND processed = 1 "
        "ORDER BY contact_id, occurred_at, id",
        (first, last),
    ):
        by_contact.setdefault(contact_id, []).append(
            ScoredEvent(id=event_id, contact_id=contact_id, type=kind, at=_utc(occurred_at), props=json.loads(props))
        )
    fields = "id, name, company, title, phone, email, region, industry, company_size, persona, profile, created_at"
    ledger: list[dict] = []
    scores: list[tuple[float, str, int]] = []
    ids = list(by_contact)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in con.execute(f"SELECT {fields} FROM contacts WHERE id IN ({marks})", chunk):
            contact = SimpleNamespace(**dict(zip([f.strip() for f in fields.split(",")], row, strict=True)))
            contact.profile = json.loads(contact.profile or "{}")
            events = by_contact[contact.id]
            state, entries = scorer.rescore(contact.id, profile_of(contact), events, until, profile_at=_utc(contact.created_at))
            ledger += ledger_rows(entries)
            scores.append((state.score, temperature(state.score, scorer.model_for(contact.region or None)), contact.id))
    con.executemany(
        "INSERT INTO score_ledger (contact_id, model, rule, points, event_id, reason, at, quiet_since) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(r["contact_id"], r["model"], r["rule"], r["points"], r["event_id"], r["reason"], sqlite_ts(r["at"]),
          None if r["quiet_since"] is None else r["quiet_since"].isoformat()) for r in ledger],
    )
    con.executemany("UPDATE contacts SET score = ?, temperature = ? WHERE id = ?", scores)
