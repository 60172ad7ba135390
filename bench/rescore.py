"""Rescoring throughput: `python -m bot rescore` over a synthetic log vs plain passes over the same rows.

`python -m bench rescore [--events 300000] [--contacts 6000] [--db sqlite|postgresql] [--pg-url URL]`

A synthetic company (contacts, items, N processed events spread over 90 days) is written straight to
a fresh database (a SQLite file with sqlite3, or a PostgreSQL database with asyncpg: bench/store.py).
Measured in the same run, on the same data:
- baseline A: a plain INSERT of the events (executemany, one transaction): what writing them costs;
- baseline B: one read pass over the events in (contact, time) order: what reading them costs;
- subject: `rescore_all` (replay through the scoring engine, ledger replaced per id range).
Targets (issue 9): rescoring ≤ 3× the single read pass. Reported as ratios, never absolute pass/fail
times.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import table, verdict, write_results
from bench.store import DEFAULT_PG_URL, KINDS, PostgresStore, SqliteStore, Store

NAME = "rescore"
SUMMARY = "rescoring N events vs a plain INSERT and a single read pass of the same events"
TYPES = [("open", 40), ("read", 25), ("dwell", 15), ("download", 6), ("cta", 3), ("forward", 3), ("message", 5),
         ("webinar_attended", 1), ("call", 1), ("unsubscribe", 1)]
T0 = dt.datetime(2026, 8, 1, tzinfo=dt.timezone.utc)


def synth_rows(contacts: int, events: int, items: int, seed: int = 1) -> list[tuple[Any, ...]]:
    """(type, contact_id, item_id, props JSON, occurred_at, received_at, processed) with naive UTC times."""
    rng = random.Random(seed)
    names = [t for t, w in TYPES for _ in range(w)]
    rows = []
    for n in range(events):
        kind = rng.choice(names)
        props = {"depth": rng.choice([25, 50, 75, 100])} if kind == "read" else (
            {"seconds": rng.randint(5, 400)} if kind == "dwell" else ({"cta": rng.choice(["demo", "contact"])} if kind == "cta" else {}))
        at = (T0 + dt.timedelta(seconds=rng.randint(0, 90 * 86400))).replace(tzinfo=None)
        rows.append((kind, rng.randint(1, contacts), rng.randint(1, items), json.dumps(props), at, at, True))
    return rows


def _stored(store: Store, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows as each driver takes them: sqlite3 gets text times and 0/1 (as bot.models stores them)."""
    if store.kind != "sqlite":
        return rows
    return [tuple(v.isoformat(" ") if isinstance(v, dt.datetime) else int(v) if isinstance(v, bool) else v for v in row)
            for row in rows]


def prepare(store: Store, name: str, contacts: int, events: int) -> float:
    """The synthetic company in database `name`; returns the seconds of the events' INSERT (baseline A)."""
    from bot.db import migrate_sync

    store.create(name)
    migrate_sync(store.url(name))
    now = T0.replace(tzinfo=None)
    items = [("s-%d" % i, "资料 %d" % i, random.Random(i).choice(["whitepaper", "case_study", "solution", "blog"]),
              random.Random(i + 1).choice(["awareness", "consideration", "decision"]), False, False, now, now) for i in range(1, 51)]
    store.execute(name, "INSERT INTO content_items (slug, title, kind, stage, gated, internal, created_at, updated_at, personas, "
                        f"industries, tags, summary) VALUES ({store.placeholders(8)}, '[]', '[]', '[]', '')", _stored(store, items))
    store.execute(name, "INSERT INTO content_versions (item_id, version, title, summary, body_md, body_hash, created_at) "
                        f"VALUES (1, 1, 't', '', '', '', {store.placeholders(1)})", _stored(store, [(now,)]))
    store.execute(name, "INSERT INTO contacts (external_userid, title, created_at, updated_at, phone, name, company, region, industry, "
                        f"company_size, persona, profile, stage, temperature, score) VALUES ({store.placeholders(5)}, '', '', '', '', '', '', "
                        "'{}', 'new', 'cold', 0)",
                  _stored(store, [(f"wm{i}", "CEO" if i % 7 == 0 else "", now, now, "13800000000" if i % 3 == 0 else None)
                                  for i in range(1, contacts + 1)]))
    rows = _stored(store, synth_rows(contacts, events, 50))
    started = time.perf_counter()
    store.execute(name, "INSERT INTO events (type, contact_id, item_id, props, occurred_at, received_at, processed) "
                        f"VALUES ({store.placeholders(7)})", rows)
    return time.perf_counter() - started


READ_PASS = ("SELECT id, contact_id, type, occurred_at, item_id, props FROM events WHERE processed = true "
             "ORDER BY contact_id, occurred_at, id")


def read_pass(store: Store, name: str) -> tuple[float, int]:
    """Baseline B: every event once, in replay order, streamed (a server-side cursor on PostgreSQL)."""
    if isinstance(store, SqliteStore):
        con = sqlite3.connect(store.path(name))
        started = time.perf_counter()
        n = sum(1 for _row in con.execute(READ_PASS))
        con.close()
        return time.perf_counter() - started, n
    assert isinstance(store, PostgresStore)

    async def go() -> tuple[float, int]:
        import asyncpg

        conn = await asyncpg.connect(store.dsn(name))
        try:
            started = time.perf_counter()
            n = 0
            async with conn.transaction():
                async for _row in conn.cursor(READ_PASS, prefetch=10_000):
                    n += 1
            return time.perf_counter() - started, n
        finally:
            await conn.close()

    return asyncio.run(go())


def rescore(url: str) -> tuple[float, object]:
    from bot.clock import FrozenClock
    from bot.config import load_settings
    from bot.rescore import rescore_all

    settings = load_settings(None, {}).replace(database={"url": url})
    started = time.perf_counter()
    report = asyncio.run(rescore_all(settings, clock=FrozenClock(T0 + dt.timedelta(days=100))))
    return time.perf_counter() - started, report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rescore", description=SUMMARY)
    # 50 events per contact, as 1M / 20k (`make bench` runs a smaller size: bench/__main__.py ON_SQLITE)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--contacts", type=int, default=6_000)
    parser.add_argument("--db", choices=KINDS, default="sqlite", help="the database (the benchmark creates it)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="--db postgresql: the server (its databases are created and dropped)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="beacon-bench-rescore-") as tmp:
        store = Store.open(args.db, Path(tmp), pg_url=args.pg_url)
        try:
            print(f"  database: {store.describe()}")
            print(f"synthesizing {args.contacts:,} contacts and {args.events:,} events …", flush=True)
            insert_s = prepare(store, "rescore", args.contacts, args.events)
            read_s, n = read_pass(store, "rescore")
            print("rescoring …", flush=True)
            rescore_s, report = rescore(store.url("rescore"))
        finally:
            store.close()
    rows = [
        ("plain INSERT of the events (baseline A)", f"{insert_s:.2f}", f"{args.events / insert_s:,.0f}", "1.00"),
        ("one read pass in (contact, time) order (baseline B)", f"{read_s:.2f}", f"{n / read_s:,.0f}", f"{read_s / insert_s:.2f}"),
        ("python -m bot rescore", f"{rescore_s:.2f}", f"{args.events / rescore_s:,.0f}", f"{rescore_s / insert_s:.2f}"),
    ]
    print(table(["what", "seconds", "events/s", "× insert"], rows))
    ratio = rescore_s / read_s
    ok = ratio <= 3.0
    print(f"rescore / read pass = {ratio:.1f}× (target ≤ 3×)  {verdict(ok)}")
    print(f"  {report.summary()}")
    write_results(NAME if args.db == "sqlite" else f"{NAME}-{args.db}", {"db": args.db, "events": args.events, "contacts": args.contacts, "insert_s": insert_s, "read_s": read_s,
                         "rescore_s": rescore_s, "ratio_to_read": ratio, "entries": report.entries})
    return 0
