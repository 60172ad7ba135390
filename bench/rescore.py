"""Rescoring throughput: `python -m bot rescore` over a synthetic log vs plain passes over the same rows.

A synthetic company (contacts, items, N processed events spread over 90 days) is written straight to
a fresh SQLite file. Measured in the same run, on the same data:
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

from bench.harness import table, verdict, write_results

NAME = "rescore"
SUMMARY = "rescoring N events vs a plain INSERT and a single read pass of the same events"
TYPES = [("open", 40), ("read", 25), ("dwell", 15), ("download", 6), ("cta", 3), ("forward", 3), ("message", 5),
         ("webinar_attended", 1), ("call", 1), ("unsubscribe", 1)]
T0 = dt.datetime(2026, 8, 1, tzinfo=dt.timezone.utc)


def synth_rows(contacts: int, events: int, items: int, seed: int = 1) -> list[tuple]:
    rng = random.Random(seed)
    names = [t for t, w in TYPES for _ in range(w)]
    rows = []
    for n in range(events):
        kind = rng.choice(names)
        props = {"depth": rng.choice([25, 50, 75, 100])} if kind == "read" else (
            {"seconds": rng.randint(5, 400)} if kind == "dwell" else ({"cta": rng.choice(["demo", "contact"])} if kind == "cta" else {}))
        at = (T0 + dt.timedelta(seconds=rng.randint(0, 90 * 86400))).replace(tzinfo=None).isoformat(" ")
        rows.append((kind, rng.randint(1, contacts), rng.randint(1, items), json.dumps(props), at, at, 1))
    return rows


def prepare(path: Path, contacts: int, events: int) -> tuple[float, list[tuple]]:
    from bot.db import migrate_sync

    migrate_sync(f"sqlite+aiosqlite:///{path}")
    con = sqlite3.connect(path)
    now = T0.replace(tzinfo=None).isoformat(" ")
    con.execute("INSERT INTO content_versions (item_id, version, title, summary, body_md, body_hash, created_at) VALUES (1, 1, 't', '', '', '', ?)", (now,))
    items = [("s-%d" % i, "资料 %d" % i, random.Random(i).choice(["whitepaper", "case_study", "solution", "blog"]),
              random.Random(i + 1).choice(["awareness", "consideration", "decision"]), now, now) for i in range(1, 51)]
    con.executemany("INSERT INTO content_items (slug, title, kind, stage, personas, industries, tags, gated, internal, summary, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, '[]', '[]', '[]', 0, 0, '', ?, ?)", items)
    con.executemany("INSERT INTO contacts (external_userid, name, company, title, region, industry, company_size, persona, profile, stage, temperature, score, created_at, updated_at, phone) "
                    "VALUES (?, '', '', ?, '', '', '', '', '{}', 'new', 'cold', 0, ?, ?, ?)",
                    [(f"wm{i}", "CEO" if i % 7 == 0 else "", now, now, "13800000000" if i % 3 == 0 else None) for i in range(1, contacts + 1)])
    con.commit()
    rows = synth_rows(contacts, events, 50)
    started = time.perf_counter()
    con.executemany("INSERT INTO events (type, contact_id, item_id, props, occurred_at, received_at, processed) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    insert_s = time.perf_counter() - started
    con.close()
    return insert_s, rows


def read_pass(path: Path) -> tuple[float, int]:
    con = sqlite3.connect(path)
    started = time.perf_counter()
    n = 0
    for _row in con.execute("SELECT id, contact_id, type, occurred_at, item_id, props FROM events WHERE processed = 1 ORDER BY contact_id, occurred_at, id"):
        n += 1
    con.close()
    return time.perf_counter() - started, n


def rescore(path: Path) -> tuple[float, object]:
    from bot.clock import FrozenClock
    from bot.config import load_settings
    from bot.rescore import rescore_all

    settings = load_settings(None, {}).replace(database={"url": f"sqlite+aiosqlite:///{path}"})
    started = time.perf_counter()
    report = asyncio.run(rescore_all(settings, clock=FrozenClock(T0 + dt.timedelta(days=100))))
    return time.perf_counter() - started, report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rescore", description=SUMMARY)
    # 50 events per contact, as 1M / 20k; the default size keeps `make bench` within ten minutes
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--contacts", type=int, default=6_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="beacon-bench-rescore-") as tmp:
        path = Path(tmp) / "rescore.db"
        print(f"synthesizing {args.contacts:,} contacts and {args.events:,} events …", flush=True)
        insert_s, _rows = prepare(path, args.contacts, args.events)
        read_s, n = read_pass(path)
        print("rescoring …", flush=True)
        rescore_s, report = rescore(path)
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
    write_results(NAME, {"events": args.events, "contacts": args.contacts, "insert_s": insert_s, "read_s": read_s,
                         "rescore_s": rescore_s, "ratio_to_read": ratio, "entries": report.entries})
    return 0
