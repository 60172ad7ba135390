"""The nightly jobs on a synthetic company: the product's jobs vs hand-written raw SQL doing the same work.

`python -m bench nightly [--contacts 20000] [--events 200000] [--rate 20] [--idle 10] [--job-timeout 300]
[--db sqlite|postgresql] [--pg-url URL] [--keep] [--reuse DIR] [--strict]` (`--help` for all). The default
size keeps the whole run near a minute. Full size:
`--contacts 1000000 --events 10000000`: the synthetic company alone takes 20-35 minutes to write
and several GB per database copy (mostly the score ledger and the event log),
with up to three copies on disk at once. `--keep` leaves it in the temp dir and `--reuse DIR` runs
the jobs again on it (SQLite; about ten minutes at full size instead of about half an hour).

The databases are SQLite files in a temp dir or, with `--db postgresql`, databases on that server
(bench/store.py: copied with CREATE DATABASE … TEMPLATE, all dropped at the end).
Setup (once): a bench config (`[scheduler] enabled = false`, logging at WARNING), `python -m bot migrate`, `python -m bot synth` (bot/synth.py) as of NOW (this hour): team,
contacts, shares, events over 180 days, and a score ledger with decay applied up to NOW, so the next
nightly decay owes exactly one tick to each quiet contact with behavior points left; then
`python -m bot serve` once until the tracker has processed the few newest events synth left to it.
The jobs run "tonight", at JOB_AT = 09:05 local time ([scheduler] timezone) on the day after NOW, on
a frozen clock: decay-scores, mark-dormant, digest-reps, digest-managers, in that order, each through
`bot.scheduler.run_job` exactly as the scheduler runs them (claim, unit of work, record).

Each variant starts from its own copy of the prepared database and runs pinned to one core:
- raw: `_raw` (a subprocess), hand-written SQL for the same work, through sqlite3 or asyncpg
  (bench/store.py `Sql`; most statements are written once for both, decay once per database, whose
  date arithmetic differs): decay as grouped
  aggregates into a temp table (no write lock on the main database) and per 1,000 contacts one short
  transaction (INSERT … SELECT the ticks, UPDATE … FROM the new scores); dormancy as one INSERT …
  SELECT and one UPDATE; the digests' numbers with the same grouped queries written by hand, then a
  `digests` row and an outbox row per recipient (no markdown rendering, no chart). It handles the
  steady state only (at most one tick due per contact, which the synthetic company guarantees); the
  results are compared, so a shortcut that did less work shows up as a mismatch;
- product, jobs alone: `_serve`, the whole app serving (tracker, inbox, outbox workers) on its copy,
  the jobs triggered by SIGUSR1 and timed there; no requests. Time ratio = product / raw, on the sum
  of the four jobs with the digests' chart drawing (matplotlib; product-only work) left out: target
  ≤ 1.5×. On SQLite a write-lock probe runs beside it (`_probe`, on the other core: BEGIN IMMEDIATE; COMMIT
  every 2 ms, polling every 0.5 ms instead of SQLite's sleeping busy handler, each wait recorded):
  its longest wait while the jobs run is the longest time a job's transaction held the write lock
  (target ≤ 50 ms), shown next to the decay job's own log line (its longest write transaction);
- product under load: the same on a fresh copy, with a light open-loop load of link opens (`_load`,
  on the other core, `--rate` per second, each the contact's own browser on one of the company's
  tracked links from a new client address: an `open` stored through the group commit, then
  attributed and scored by the tracker) and, on SQLite, the probe. Reported: link-open p50/p99 during each job
  and during all four, against the `--idle` seconds (IDLE_S) of the same load before (target: p99 ≤ 3× idle),
  and the probe's longest wait in each window.
Then the results are checked: the same decay rows tonight wrote (contact, spell, points, time, reason), scores and
temperatures, the same dormancy moves, the same digest numbers per recipient in the jobs-alone run and
the raw run; and no link open answered non-2xx.
On PostgreSQL there is no database-wide write lock, so no probe; its server's processes are not pinned
(they serve both variants alike). The raw column "longest tx" still shows each job's longest write
transaction.
Exit status: 0 ran and the results agree (targets may MISS: the table says so; with --strict a MISS is
exit 1 too), 1 a mismatch, a failed job, an error answer or a job past --job-timeout, 2 could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench import harness
from bench.harness import BenchError, CpuPlan, Server, bot
from bench.store import DEFAULT_PG_URL, KINDS, PostgresSql, PostgresStore, Sql, SqliteSql, SqliteStore, Store, sqlite_ts

NAME = "nightly"
SUMMARY = "the nightly jobs (decay, dormancy, digests) on a synthetic company vs raw SQL; write lock; link p99"
ROOT = harness.ROOT
TZ = "Asia/Shanghai"
JOBS = ("decay-scores", "mark-dormant", "digest-reps", "digest-managers")
TARGET_TIME_RATIO = 1.5
TARGET_LOCK_MS = 50.0
TARGET_P99_RATIO = 3.0
IDLE_S = 10.0  # seconds of load (and probing) measured before the jobs start
PROBE_EVERY_S = 0.002
LINK_TOKENS = 2000


PREPARED, RAW, IDLE_RUN, LOAD_RUN = "prepared", "raw", "product-idle", "product-load"  # the databases (bench/store.py)


def config_text(port: int, db_url: str) -> str:
    return harness.beacon_config("Beacon nightly-jobs benchmark", port=port, db_url=db_url, scheduler={"timezone": TZ})


def me(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.nightly", *args]


class Prepared:
    def __init__(self, tmp: Path, store: Store, now: dt.datetime) -> None:
        self.tmp = tmp
        self.store = store
        self.now = now
        local = now.astimezone(ZoneInfo(TZ))
        self.job_at = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(9, 5), tzinfo=ZoneInfo(TZ)).astimezone(dt.timezone.utc)
        self.paths = tmp / "paths.txt"
        self.synth_s = 0.0
        self.synth_summary = ""
        self.size_mb = 0.0
        self.last_event = 0


PREPARED_JSON = "prepared.json"  # what `--reuse` needs of a kept run's prepared database


def _save_prepared(prep: Prepared, contacts: int, events: int, seed: int) -> None:
    facts = {"now": prep.now.isoformat(), "synth_s": prep.synth_s, "synth_summary": prep.synth_summary,
             "size_mb": prep.size_mb, "last_event": prep.last_event, "contacts": contacts, "events": events, "seed": seed}
    (prep.tmp / PREPARED_JSON).write_text(json.dumps(facts), encoding="utf-8")


def reuse_prepared(tmp: Path, store: Store) -> tuple[Prepared, dict[str, Any]]:
    """The prepared database a `--keep` run left in `tmp` (SQLite), as it was before any job ran."""
    facts_file = tmp / PREPARED_JSON
    if not facts_file.exists() or not isinstance(store, SqliteStore) or not store.path(PREPARED).exists():
        raise BenchError(f"{tmp} holds no prepared SQLite database of a `--keep` run ({PREPARED_JSON}, {PREPARED}.db)")
    facts = json.loads(facts_file.read_text(encoding="utf-8"))
    prep = Prepared(tmp, store, dt.datetime.fromisoformat(facts["now"]))
    prep.synth_s, prep.synth_summary = facts["synth_s"], facts["synth_summary"]
    prep.size_mb, prep.last_event = facts["size_mb"], facts["last_event"]
    if not prep.paths.exists():
        raise BenchError(f"{prep.paths} is missing")
    return prep, facts


def prepare(tmp: Path, store: Store, *, contacts: int, events: int, seed: int) -> Prepared:
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    prep = Prepared(tmp, store, now)
    store.create(PREPARED)
    url = store.url(PREPARED)
    config = tmp / "setup.toml"
    config.write_text(config_text(harness.free_port(), url), encoding="utf-8")
    with harness.timed("migrate"):
        _run(bot(config, "migrate"), "migrate", 120)
    started = time.monotonic()
    with harness.timed(f"python -m bot synth --contacts {contacts:,} --events {events:,} (as of {now:%Y-%m-%d %H:%M} UTC)"):
        out = _run(bot(config, "synth", "--contacts", str(contacts), "--events", str(events), "--seed", str(seed),
                       "--now", now.isoformat()), "synth", 4 * 3600)
    prep.synth_s = time.monotonic() - started
    prep.synth_summary = out.strip().splitlines()[-1] if out.strip() else ""
    # The events of the last minutes are still waiting for the tracker: let the product process them
    # once, so every variant starts from the same, settled database.
    with harness.timed("python -m bot serve until the tracker has processed the newest events"):
        port = harness.free_port()
        config.write_text(config_text(port, url), encoding="utf-8")
        server = Server.start("setup", bot(config, "serve"), core=None, ready_url=f"http://127.0.0.1:{port}/healthz",
                              log=tmp / "setup.log", timeout_s=120)
        try:
            _wait_drained(store, PREPARED, 120)
        finally:
            rc = server.stop(timeout_s=60)
        if rc != 0:
            raise BenchError(f"the setup server exited with {rc}:\n{harness.tail(server.log)}")
    con = store.sql(PREPARED)
    try:
        prep.last_event = con.rows("SELECT MAX(id) FROM events")[0][0] or 0
        if con.dialect == "sqlite":
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # The contact's own browser on the contact's own link: an open the tracker attributes at once.
        links = con.rows(
            "SELECT s.token, v.cookie_id FROM shares s JOIN content_items i ON i.id = s.item_id "
            "JOIN visitors v ON v.contact_id = s.contact_id WHERE i.gated = FALSE ORDER BY s.id")
    finally:
        con.close()
    if not links:
        raise BenchError("the synthetic company has no opened shares of non-gated items")
    random.Random(seed).shuffle(links)
    prep.paths.write_text("".join(f"/l/{token} {cookie}\n" for token, cookie in links[:LINK_TOKENS]), encoding="utf-8")
    prep.size_mb = store.size_mb(PREPARED)
    _save_prepared(prep, contacts, events, seed)
    return prep


def _run(argv: list[str], what: str, timeout_s: float) -> str:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return proc.stdout


# --- the product's jobs, inside a serving app (subprocess `_serve`) ---------------------------------


async def _serve(config: Path, job_at: dt.datetime, results: Path) -> None:
    """The app as `serve` builds it (all background workers), on a clock frozen at JOB_AT; SIGUSR1 runs
    the nightly jobs through run_job one after the other and writes their timings to `results`."""
    import logging

    from aiohttp import web

    from bot.app import RUNTIME, create_app
    from bot.clock import FrozenClock
    from bot.config import load_settings
    from bot.logs import setup_logging
    from bot.scheduler import daily_key, default_jobs, run_job
    from bot.serve import freeze_startup_heap

    settings = load_settings(config)
    setup_logging(settings.logging.level, settings.logging.format, [])
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record.getMessage())

    for name in ("beacon.scoring.jobs", "beacon.digest", "beacon.scheduler"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(Capture())
    chart_s = [0.0]
    import bot.digest.chart as chart_module

    draw = chart_module.draw_charts

    async def timed_charts(*args: Any, **kwargs: Any) -> Any:  # instrumentation only: how long the charts take
        started = time.perf_counter()
        try:
            return await draw(*args, **kwargs)
        finally:
            chart_s[0] += time.perf_counter() - started

    chart_module.draw_charts = timed_charts  # type: ignore[assignment]
    app = create_app(settings, clock=FrozenClock(job_at))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    await web.TCPSite(runner, settings.server.host, settings.server.port).start()
    rt = app[RUNTIME]
    freeze_startup_heap()  # as `serve` does
    jobs = {job_id: job for job_id, job, _trigger, _key in default_jobs(settings.scheduler.timezone, settings)}
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def nightly() -> None:
        await go.wait()
        out: list[dict[str, Any]] = []
        for job_id in JOBS:
            captured.clear()
            chart_s[0] = 0.0
            started = time.monotonic()
            ran = await run_job(rt, job_id, jobs[job_id], daily_key(job_id, rt))
            ended = time.monotonic()
            async with rt.sessions() as session:
                from bot.models import JobRun

                row = await session.get(JobRun, daily_key(job_id, rt))
                error = row.error if row is not None else "no job_runs row"
            out.append({"job": job_id, "ran": ran, "error": error, "start": started, "end": ended, "seconds": ended - started,
                        "chart_s": chart_s[0], "log": list(captured)})
        tmp = results.with_suffix(".tmp")
        tmp.write_text(json.dumps(out), encoding="utf-8")
        tmp.rename(results)

    rt.spawn(nightly(), "bench-nightly")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# --- the write-lock probe (subprocess `_probe`) ----------------------------------------------------


def _probe(db: Path, out: Path) -> None:
    """BEGIN IMMEDIATE; COMMIT every PROBE_EVERY_S until SIGTERM; writes [start, wait s] pairs."""
    samples: list[tuple[float, float]] = []
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    con = sqlite3.connect(db, timeout=0, isolation_level=None)
    con.execute("PRAGMA busy_timeout=0")
    while running[0]:
        started = time.monotonic()
        while True:
            try:
                con.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.0005)
        waited = time.monotonic() - started
        con.execute("COMMIT")
        samples.append((started, waited))
        time.sleep(PROBE_EVERY_S)
    out.write_text(json.dumps(samples), encoding="utf-8")


# --- the light link-open load (subprocess `_load`) -------------------------------------------------


async def _load(base: str, paths_file: Path, rate: float, out: Path) -> None:
    """Open loop: one GET /l/{token} every 1/rate s, by the contact's own browser (its cookie), from a new
    client address each, until SIGTERM; latency counts from when the request was due, so a stalled
    server is not hidden. Writes [due, seconds, status]."""
    import aiohttp

    from bench.loadgen import PHONE_UA, random_ip

    links = [line.split() for line in paths_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random()
    samples: list[tuple[float, float, int]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def one(due: float, path: str, visitor: str) -> None:
            headers = {"User-Agent": PHONE_UA, "Cookie": f"bcn_v={visitor}", "X-Forwarded-For": random_ip(rng)}
            status = 0
            try:
                async with http.get(base + path, headers=headers, allow_redirects=False) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = -1
            samples.append((due, time.monotonic() - due, status))

        start = time.monotonic()
        n = 0
        while not stop.is_set():
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            task = asyncio.ensure_future(one(due, *rng.choice(links)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        if pending:
            await asyncio.wait(pending, timeout=30)
    out.write_text(json.dumps(samples), encoding="utf-8")


# --- raw SQL (subprocess `_raw`) -------------------------------------------------------------------

RAW_CHUNK = 1000


def _raw(config: Path, job_at: dt.datetime, out: Path) -> None:
    """The same work as the four jobs in hand-written SQL (sqlite3 or asyncpg); writes timings to `out`."""
    from bot.config import load_settings

    settings = load_settings(config)
    con = _connect(settings.database.url)
    results = []
    try:
        for job_id, work in (("decay-scores", _raw_decay), ("mark-dormant", _raw_dormant), ("digest-reps", _raw_digest_reps),
                             ("digest-managers", _raw_digest_managers)):
            started = time.monotonic()
            held: list[float] = []
            detail = work(con, settings, job_at, held)
            results.append({"job": job_id, "seconds": time.monotonic() - started, "longest_tx_ms": max(held, default=0.0) * 1000,
                            "detail": detail})
    finally:
        con.close()
    out.write_text(json.dumps(results), encoding="utf-8")


def _connect(url: str) -> Sql:
    """A hand-written-SQL connection to the app's `[database] url`."""
    if url.startswith("sqlite"):
        return SqliteSql(Path(url.split("///", 1)[1]))
    return PostgresSql(url.replace("postgresql+asyncpg://", "postgresql://", 1))


def _naive_utc(value: Any) -> dt.datetime:
    """A timestamp as read back: SQLite's text or asyncpg's naive datetime, both UTC."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _raw_decay(con: Sql, settings: Any, now: dt.datetime, held: list[float]) -> str:
    """Per RAW_CHUNK quiet contacts: their ledger and log aggregates into a temp table (no write lock
    on SQLite: the temp database is the connection's own), tonight's tick computed there, then one
    short write transaction: INSERT … SELECT the ticks, UPDATE … FROM the new scores."""
    spec = settings.scoring.models[0]
    if len(settings.scoring.models) != 1:
        raise BenchError("the raw decay handles one scoring model")
    zone = ZoneInfo(spec.timezone)
    today = now.astimezone(zone).date()
    midnight = dt.datetime.combine(today, dt.time(), tzinfo=zone)
    sql = _DECAY_SQL[con.dialect]
    p = {"cutoff": now - dt.timedelta(days=spec.decay_after_days), "n": RAW_CHUNK, "keep": 0.5 ** (1 / spec.decay_half_life_days),
         "after_days": spec.decay_after_days, "model": spec.name, "at": midnight, "now": now, "hot": float(spec.hot_at),
         "warm": float(spec.warm_at), "tz": spec.timezone}  # fmt: skip
    if con.dialect == "sqlite":
        offset_h = now.astimezone(zone).utcoffset().total_seconds() / 3600  # Asia/Shanghai keeps one offset all year
        sql = {k: v.replace("{shift}", f"{offset_h:+.0f} hours") for k, v in sql.items()}
        p["today"] = con.rows("SELECT julianday(:d)", {"d": today})[0][0]
    else:
        p["today"] = today
    con.execute(sql["create"])
    after, quiet, decayed = 0, 0, 0
    while True:
        con.execute("DELETE FROM due")
        con.execute(sql["read"], {**p, "after": after})
        n, last = con.rows("SELECT COUNT(*), MAX(id) FROM due")[0]
        if not n:
            break
        quiet += n
        after = last
        # One tick for tonight when it is due: decay_after_days past the last engagement, after the last tick.
        con.execute(sql["tick"], p)
        with con.write(held) as w:
            w.execute(sql["ledger"], p)
            decayed += w.execute(sql["scores"], p)
    con.execute("DROP TABLE due")
    return f"{decayed} of {quiet} quiet contacts lost points"


_BEHAVIOR = "SUM(CASE WHEN rule = 'decay' OR (event_id IS NOT NULL AND points > 0) THEN points ELSE 0 END) * 100"
_CHUNK = """WITH chunk AS (
    SELECT id, profile FROM contacts
    WHERE id > :after AND last_activity_at < :cutoff AND merged_into_id IS NULL AND erased_at IS NULL
    ORDER BY id LIMIT :n)"""
_ENGAGED = "processed = TRUE AND type NOT IN ('contact_deleted', 'unsubscribe')"
# The last engagement as the product finds it: the contact's events walked back from the newest by the
# (contact, time) index (a grouped maximum over the chunk's events reads every one of them).
_LAST_ENGAGED = f"SELECT occurred_at FROM events WHERE contact_id = ch.id AND {_ENGAGED} ORDER BY occurred_at DESC LIMIT 1"
_DECAY_SQL = {
    # local days as Julian day numbers, shifted by the zone's fixed offset
    "sqlite": {
        "create": """CREATE TEMP TABLE due (id INTEGER PRIMARY KEY, total REAL, behavior INTEGER, active REAL, last_tick REAL,
                     profile TEXT, tick INTEGER, quiet INTEGER)""",
        "read": f"""
            INSERT INTO temp.due (id, total, behavior, active, last_tick, profile)
            {_CHUNK}
            SELECT ch.id, COALESCE(l.total, 0), COALESCE(l.behavior, 0),
                   julianday(date(({_LAST_ENGAGED}), '{{shift}}')) AS active, l.last_tick, ch.profile
            FROM chunk ch
            LEFT JOIN (
                SELECT contact_id, SUM(points) AS total, CAST(ROUND({_BEHAVIOR}) AS INTEGER) AS behavior,
                       julianday(date(MAX(CASE WHEN rule = 'decay' THEN at END), '{{shift}}')) AS last_tick
                FROM score_ledger WHERE contact_id IN (SELECT id FROM chunk) GROUP BY contact_id) l ON l.contact_id = ch.id""",
        "tick": """
            UPDATE temp.due SET quiet = CAST(:today - active AS INTEGER),
                   tick = MIN(behavior, MAX(1, CAST(behavior * (1 - :keep) + 0.5 AS INTEGER)))
            WHERE behavior > 0 AND active IS NOT NULL AND :today > active + :after_days
              AND (last_tick IS NULL OR last_tick < :today)""",
        "ledger": """
            INSERT INTO score_ledger (contact_id, model, rule, points, event_id, reason, at, quiet_since)
            SELECT id, :model, 'decay', -tick / 100.0, NULL, '连续' || quiet || '天无互动，行为分逐日衰减', :at, date(active)
            FROM temp.due WHERE tick IS NOT NULL ORDER BY id
            ON CONFLICT (contact_id, model, quiet_since) WHERE quiet_since IS NOT NULL
            DO UPDATE SET points = round(score_ledger.points + excluded.points, 2), at = excluded.at, reason = excluded.reason""",
        "scores": """
            UPDATE contacts SET score = ROUND(d.total - d.tick / 100.0, 2),
                   temperature = CASE
                       WHEN julianday(json_extract(d.profile, '$.reactivated_at')) > julianday(:now) - 7 THEN 'hot'
                       WHEN ROUND(d.total - d.tick / 100.0, 2) >= :hot THEN 'hot'
                       WHEN ROUND(d.total - d.tick / 100.0, 2) >= :warm THEN 'warm' ELSE 'cold' END,
                   updated_at = :now
            FROM temp.due d WHERE contacts.id = d.id AND d.tick IS NOT NULL""",
    },
    # local days as dates in the model's zone (timestamps are stored as naive UTC)
    "postgresql": {
        "create": """CREATE TEMP TABLE due (id bigint PRIMARY KEY, total double precision, behavior bigint, active date,
                     last_tick date, profile json, tick bigint, quiet integer)""",
        "read": f"""
            INSERT INTO due (id, total, behavior, active, last_tick, profile)
            {_CHUNK}
            SELECT ch.id, COALESCE(l.total, 0), COALESCE(l.behavior, 0),
                   (({_LAST_ENGAGED}) AT TIME ZONE 'UTC' AT TIME ZONE CAST(:tz AS text))::date AS active, l.last_tick, ch.profile
            FROM chunk ch
            LEFT JOIN (
                SELECT contact_id, SUM(points) AS total, ROUND({_BEHAVIOR})::bigint AS behavior,
                       (MAX(CASE WHEN rule = 'decay' THEN at END) AT TIME ZONE 'UTC' AT TIME ZONE CAST(:tz AS text))::date AS last_tick
                FROM score_ledger WHERE contact_id IN (SELECT id FROM chunk) GROUP BY contact_id) l ON l.contact_id = ch.id""",
        "tick": """
            UPDATE due SET quiet = CAST(:today AS date) - active,
                   tick = LEAST(behavior, GREATEST(1, floor(behavior * (1 - CAST(:keep AS double precision)) + 0.5)::bigint))
            WHERE behavior > 0 AND active IS NOT NULL AND CAST(:today AS date) > active + CAST(:after_days AS integer)
              AND (last_tick IS NULL OR last_tick < CAST(:today AS date))""",
        "ledger": """
            INSERT INTO score_ledger (contact_id, model, rule, points, event_id, reason, at, quiet_since)
            SELECT id, CAST(:model AS text), 'decay', -tick / 100.0, NULL, '连续' || quiet || '天无互动，行为分逐日衰减',
                   CAST(:at AS timestamp), active
            FROM due WHERE tick IS NOT NULL ORDER BY id
            ON CONFLICT (contact_id, model, quiet_since) WHERE quiet_since IS NOT NULL
            DO UPDATE SET points = round((score_ledger.points + excluded.points)::numeric, 2)::double precision,
                          at = excluded.at, reason = excluded.reason""",
        "scores": """
            UPDATE contacts SET score = ROUND((d.total - d.tick / 100.0)::numeric, 2),
                   temperature = CASE
                       WHEN ((d.profile->>'reactivated_at')::timestamptz AT TIME ZONE 'UTC')
                            > CAST(:now AS timestamp) - interval '7 days' THEN 'hot'
                       WHEN ROUND((d.total - d.tick / 100.0)::numeric, 2) >= CAST(:hot AS double precision) THEN 'hot'
                       WHEN ROUND((d.total - d.tick / 100.0)::numeric, 2) >= CAST(:warm AS double precision) THEN 'warm' ELSE 'cold' END,
                   updated_at = CAST(:now AS timestamp)
            FROM due d WHERE contacts.id = d.id AND d.tick IS NOT NULL""",
    },
}


def _raw_dormant(con: Sql, settings: Any, now: dt.datetime, held: list[float]) -> str:
    days = settings.lifecycle.dormant_after_days
    p = {"cutoff": now - dt.timedelta(days=days), "now": now, "reason": f"超过 {days} 天未付款"}
    with con.write(held) as w:
        w.execute("""INSERT INTO stage_history (contact_id, from_stage, to_stage, "by", reason, at)
                     SELECT id, 'customer', 'dormant', 'rule:dormancy', :reason, :now FROM contacts
                     WHERE stage = 'customer' AND last_payment_at < :cutoff AND merged_into_id IS NULL""", p)
        moved = w.execute("""UPDATE contacts SET stage = 'dormant', updated_at = :now
                             WHERE stage = 'customer' AND last_payment_at < :cutoff AND merged_into_id IS NULL""", p)
    return f"{moved} customers became dormant"


def _windows(settings: Any, now: dt.datetime) -> tuple[dt.date, Any, Any]:
    from bot.digest.window import window_for

    day = now.astimezone(ZoneInfo(settings.scheduler.timezone)).date()
    return day, window_for("reps", day, settings), window_for("managers", day, settings)


def _queue(w: Sql, kind: str, recipient: str, day: dt.date, numbers: dict[str, Any], body: str | None, now: dt.datetime) -> bool:
    content = json.dumps({"bodies": [body] if body else [], "numbers": numbers, "chart": False, "empty": not body}, ensure_ascii=False)
    added = w.execute("INSERT INTO digests (kind, recipient, day, content, created_at) VALUES (:kind, :who, :day, :content, :now) "
                      "ON CONFLICT DO NOTHING", {"kind": kind, "who": recipient, "day": day, "content": content, "now": now})
    if not added or not body:
        return False
    payload = json.dumps({"touser": recipient, "msgtype": "markdown", "markdown": {"content": body}}, ensure_ascii=False)
    w.execute("INSERT INTO outbox (idempotency_key, path, payload, status, attempts, next_attempt_at, created_at) "
              "VALUES (:key, '/cgi-bin/message/send', :payload, 'pending', 0, :now, :now)",
              {"key": f"digest:{kind}:{day.isoformat()}:{recipient}:0", "payload": payload, "now": now})
    return True


def _count(condition: str) -> str:
    """SUM of a condition, on both databases (PostgreSQL sums no booleans)."""
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


def _raw_digest_reps(con: Sql, settings: Any, now: dt.datetime, held: list[float]) -> str:
    day, window, _ = _windows(settings, now)
    p = {"end": window.end, "as_of": window.as_of, "max_tasks": settings.digest.max_tasks, "top": settings.digest.top_items}
    reps = con.rows(f"SELECT userid, name FROM reps WHERE active = TRUE AND role IN ('rep', 'manager') ORDER BY userid")
    due = f"""t.status = 'open' AND t.due_at < :end AND (t.snoozed_until IS NULL OR t.snoozed_until < :end)
             AND t.owner_userid IN (SELECT userid FROM reps WHERE active = TRUE AND role IN ('rep', 'manager'))"""
    counts = {o: (n, int(late or 0)) for o, n, late in con.rows(
        f"SELECT t.owner_userid, COUNT(*), {_count('t.due_at < :as_of')} FROM tasks t WHERE {due} GROUP BY t.owner_userid", p)}
    lines: dict[str, list[Any]] = {}
    for owner, task_id, title in con.rows(f"""
            SELECT owner_userid, id, title FROM (
                SELECT t.owner_userid, t.id, t.title, row_number() OVER (
                    PARTITION BY t.owner_userid ORDER BY (t.due_at < :as_of) DESC, t.priority, t.due_at, t.id) AS rn
                FROM tasks t WHERE {due}) ranked WHERE rn <= :max_tasks ORDER BY owner_userid, rn""", p):
        lines.setdefault(owner, []).append((task_id, title))
    hot: dict[str, list[Any]] = {}
    for owner, name, score in con.rows(f"""
            SELECT owner_userid, name, score FROM (
                SELECT c.owner_userid, c.name, c.score, row_number() OVER (PARTITION BY c.owner_userid ORDER BY c.score DESC, c.id) AS rn
                FROM contacts c
                WHERE c.owner_userid IN (SELECT userid FROM reps WHERE active = TRUE AND role IN ('rep', 'manager'))
                  AND c.temperature = 'hot' AND c.stage IN ('nurturing', 'mql', 'sql') AND c.merged_into_id IS NULL
                  AND c.erased_at IS NULL AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.contact_id = c.id AND t.status = 'open')) ranked
            WHERE rn <= :top""", p):
        hot.setdefault(owner, []).append((name, score))
    sent = 0
    with con.write(held) as w:
        for userid, name in reps:
            total, overdue = counts.get(userid, (0, 0))
            todo, leads = lines.get(userid, []), hot.get(userid, [])
            numbers = {"tasks": total, "overdue": overdue, "task_ids": [t[0] for t in todo], "hot": len(leads)}
            body = None
            if total or leads:
                body = "\n".join([f"**今日待办** {name}：{total} 项，逾期 {overdue}"] + [f"{n}. {t[1]}" for n, t in enumerate(todo, 1)]
                                 + [f"> {lead[0]} · {lead[1]:g}" for lead in leads])
            sent += _queue(w, "reps", userid, day, numbers, body, now)
    return f"{sent} sent"


def _raw_digest_managers(con: Sql, settings: Any, now: dt.datetime, held: list[float]) -> str:
    from bot.sop.calendar import day_bounds

    day, _, window = _windows(settings, now)
    tz = ZoneInfo(settings.scheduler.timezone)
    p = {"start": window.start, "end": window.end, "as_of": window.as_of}
    managers = dict(con.rows("SELECT userid, name FROM reps WHERE role = 'manager' AND active = TRUE ORDER BY userid"))
    members = con.rows("SELECT userid, name, manager_userid FROM reps WHERE active = TRUE AND manager_userid IN "
                       "(SELECT userid FROM reps WHERE role = 'manager' AND active = TRUE) ORDER BY userid")
    team: dict[str, dict[str, Any]] = {}
    for userid, name, manager in members:
        team.setdefault(manager, {"name": managers[manager], "reps": {}, "new_contacts": 0, "by_channel": {}, "new_mqls": 0,
                                  "sla_missed": {}, "moves": [], "engaged": [], "advancing": [], "funnel": {}})
        team[manager]["reps"][userid] = {"due": 0, "done": 0, "overdue": 0, "name": name or userid}
    owned = "JOIN reps r ON r.userid = c.owner_userid AND r.manager_userid IN (SELECT userid FROM reps WHERE role = 'manager' AND active = TRUE)"
    manager_of = {userid: manager for userid, _, manager in members}
    for owner, due, done, overdue in con.rows(f"""
            SELECT owner_userid, {_count("due_at >= :start AND due_at < :end")},
                   {_count("status = 'done' AND completed_at >= :start AND completed_at < :end")}, {_count("status = 'open' AND due_at < :end")}
            FROM tasks WHERE kind = 'sop' AND ((due_at >= :start AND due_at < :end) OR (status = 'done' AND completed_at >= :start
                  AND completed_at < :end) OR (status = 'open' AND due_at < :end)) GROUP BY owner_userid""", p):
        if owner in manager_of:
            team[manager_of[owner]]["reps"][owner].update(due=int(due or 0), done=int(done or 0), overdue=int(overdue or 0))
    for manager, channel, n in con.rows(f"""
            SELECT r.manager_userid, ch.name, COUNT(*) FROM contacts c {owned} LEFT JOIN channels ch ON ch.id = c.channel_id
            WHERE c.created_at >= :start AND c.created_at < :end AND c.merged_into_id IS NULL GROUP BY r.manager_userid, ch.name""", p):
        team[manager]["new_contacts"] += n
        team[manager]["by_channel"][channel or "直接添加"] = n
    for manager, a, b, n in con.rows(f"""
            SELECT r.manager_userid, h.from_stage, h.to_stage, COUNT(DISTINCT h.contact_id)
            FROM stage_history h JOIN contacts c ON c.id = h.contact_id {owned}
            WHERE h.at >= :start AND h.at < :end GROUP BY r.manager_userid, h.from_stage, h.to_stage""", p):
        team[manager]["moves"].append([a, b, n])
        if b == "mql":
            team[manager]["new_mqls"] += n
    sla_s = settings.alerts.sla_hours * 3600
    for owner, created, completed, status in con.rows("""
            SELECT owner_userid, created_at, completed_at, status FROM tasks
            WHERE kind IN ('follow_up', 'hot_lead', 'dormant') AND created_at >= :start AND created_at < :end""", p):
        if owner not in manager_of or status == "dismissed":
            continue
        deadline = _naive_utc(created) + dt.timedelta(seconds=sla_s)
        if deadline.replace(tzinfo=dt.timezone.utc) > window.as_of:
            continue
        if completed is None or _naive_utc(completed) > deadline:
            missed = team[manager_of[owner]]["sla_missed"]
            rep_name = team[manager_of[owner]]["reps"][owner]["name"]
            missed[rep_name] = missed.get(rep_name, 0) + 1
    engagement = "('open', 'read', 'dwell', 'download', 'cta', 'form_submit', 'forward')"
    for manager, item, events, people in con.rows(f"""
            SELECT r.manager_userid, e.item_id, COUNT(*), COUNT(DISTINCT e.contact_id) FROM events e JOIN contacts c ON c.id = e.contact_id {owned}
            WHERE e.type IN {engagement} AND e.item_id IS NOT NULL AND e.occurred_at >= :start AND e.occurred_at < :end
            GROUP BY r.manager_userid, e.item_id""", p):
        team[manager]["engaged"].append((item, events, people))
    for manager, item, n in con.rows(f"""
            SELECT manager, item_id, COUNT(DISTINCT contact_id) FROM (
                SELECT r.manager_userid AS manager, h.contact_id, (
                    SELECT e.item_id FROM events e WHERE e.contact_id = h.contact_id AND e.item_id IS NOT NULL
                      AND e.type IN {engagement} AND e.occurred_at <= h.at ORDER BY e.occurred_at DESC, e.id DESC LIMIT 1) AS item_id
                FROM stage_history h JOIN contacts c ON c.id = h.contact_id {owned}
                WHERE h.at >= :start AND h.at < :end AND h.to_stage IN ('nurturing', 'mql', 'sql', 'customer')) advanced
            WHERE item_id IS NOT NULL GROUP BY manager, item_id""", p):
        team[manager]["advancing"].append((item, n))
    for manager, stage, n in con.rows(f"""
            SELECT r.manager_userid, c.stage, COUNT(*) FROM contacts c {owned}
            WHERE c.merged_into_id IS NULL AND c.erased_at IS NULL AND c.stage IN ('new', 'nurturing', 'mql', 'sql', 'customer')
            GROUP BY r.manager_userid, c.stage""", p):
        team[manager]["funnel"][stage] = n
    days = [window.report_day - dt.timedelta(days=k) for k in range(6, -1, -1)]
    bounds = [day_bounds(d, tz) for d in days]
    cols = ", ".join(_count(f"c.created_at >= '{sqlite_ts(a)}' AND c.created_at < '{sqlite_ts(b)}'") for a, b in bounds)
    trend = {m: list(rest) for m, *rest in con.rows(f"""
        SELECT r.manager_userid, {cols} FROM contacts c {owned}
        WHERE c.created_at >= '{sqlite_ts(bounds[0][0])}' AND c.created_at < '{sqlite_ts(bounds[-1][1])}' AND c.merged_into_id IS NULL
        GROUP BY r.manager_userid""")}
    cols = ", ".join(_count(f"h.at >= '{sqlite_ts(a)}' AND h.at < '{sqlite_ts(b)}'") for a, b in bounds)
    mql_trend = {m: list(rest) for m, *rest in con.rows(f"""
        SELECT r.manager_userid, {cols} FROM stage_history h JOIN contacts c ON c.id = h.contact_id {owned}
        WHERE h.to_stage = 'mql' AND h.at >= '{sqlite_ts(bounds[0][0])}' AND h.at < '{sqlite_ts(bounds[-1][1])}' GROUP BY r.manager_userid""")}
    titles = dict(con.rows("SELECT id, title FROM content_items"))
    top = settings.digest.top_items
    sent = 0
    with con.write(held) as w:
        for manager, t in team.items():
            engaged = sorted(t["engaged"], key=lambda r: (-r[1], -r[2], r[0]))[:top]
            advancing = sorted(t["advancing"], key=lambda r: (-r[1], r[0]))[:top]
            numbers = {
                "reps": {u: {k: v for k, v in r.items() if k != "name"} for u, r in t["reps"].items()},
                "new_contacts": t["new_contacts"], "by_channel": t["by_channel"], "new_mqls": t["new_mqls"],
                "sla_missed": t["sla_missed"], "moves": sorted(t["moves"], key=lambda m: (-m[2], m[0], m[1])),
                "top_engaged": [[titles.get(i, f"#{i}"), e, n] for i, e, n in engaged],
                "top_advancing": [[titles.get(i, f"#{i}"), n] for i, n in advancing], "funnel": t["funnel"],
                "trend": [trend.get(manager, [0] * 7), mql_trend.get(manager, [0] * 7)],
            }  # fmt: skip
            body = f"**团队日报** {t['name']}：新增客户 {t['new_contacts']}，新增 MQL {t['new_mqls']}"
            sent += _queue(w, "managers", manager, day, numbers, body, now)
    return f"{sent} sent"


# --- comparing results -----------------------------------------------------------------------------


def compare(store: Store, product: str, raw: str, job_at: dt.datetime, last_event: int) -> list[str]:
    """What differs between the product's idle run and the raw run (empty: the same work was done)."""
    problems: list[str] = []
    p, r = store.sql(product), store.sql(raw)
    try:
        return _differences(p, r, job_at, last_event)
    finally:
        p.close()
        r.close()


def _differences(p: Sql, r: Sql, job_at: dt.datetime, last_event: int) -> list[str]:
    problems: list[str] = []
    midnight = dt.datetime.combine(job_at.astimezone(ZoneInfo(TZ)).date(), dt.time(), tzinfo=ZoneInfo(TZ))
    # Contacts with events newer than the prepared database's (none without load) are left out.
    touched = {c for (c,) in p.rows(
        "SELECT DISTINCT contact_id FROM events WHERE contact_id IS NOT NULL AND id > :last", {"last": last_event})}
    sql = "SELECT contact_id, points, at, reason, quiet_since FROM score_ledger WHERE rule = 'decay' AND at = :at ORDER BY contact_id"
    ticks_p = [t for t in p.rows(sql, {"at": midnight}) if t[0] not in touched]
    ticks_r = [t for t in r.rows(sql, {"at": midnight}) if t[0] not in touched]
    if ticks_p != ticks_r:
        diff = set(ticks_p) ^ set(ticks_r)
        problems.append(f"decay ticks differ: product {len(ticks_p)}, raw {len(ticks_r)}, {len(diff)} differ, e.g. {sorted(diff)[:3]}")
    if not ticks_p:
        problems.append("no decay ticks at all: the synthetic company had nothing to decay")
    scores_p = {c: (s, t) for c, s, t in p.rows("SELECT id, score, temperature FROM contacts") if c not in touched}
    scores_r = {c: (s, t) for c, s, t in r.rows("SELECT id, score, temperature FROM contacts") if c not in touched}
    bad = [c for c in scores_p if abs(scores_p[c][0] - scores_r[c][0]) > 0.005 or scores_p[c][1] != scores_r[c][1]]
    if bad:
        problems.append(f"{len(bad)} contacts' scores or temperatures differ, e.g. {[(c, scores_p[c], scores_r[c]) for c in bad[:3]]}")
    sql = """SELECT contact_id FROM stage_history WHERE "by" = 'rule:dormancy' AND to_stage = 'dormant' AND at >= :at ORDER BY contact_id"""
    if p.rows(sql, {"at": job_at}) != r.rows(sql, {"at": job_at}):
        problems.append("dormancy moves differ")
    for kind, keys in (("reps", ("tasks", "overdue", "hot", "task_ids")),
                       ("managers", ("reps", "new_contacts", "by_channel", "new_mqls", "sla_missed", "moves", "top_engaged", "top_advancing", "funnel"))):
        sql = "SELECT recipient, content FROM digests WHERE kind = :kind ORDER BY recipient"
        dp = {who: json.loads(c)["numbers"] for who, c in p.rows(sql, {"kind": kind})}
        dr = {who: json.loads(c)["numbers"] for who, c in r.rows(sql, {"kind": kind})}
        if set(dp) != set(dr):
            problems.append(f"{kind} digests for different recipients: product {len(dp)}, raw {len(dr)}")
            continue
        for who in dp:
            a = {k: dp[who].get(k) for k in keys}
            b = {k: dr[who].get(k) for k in keys}
            if json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
                problems.append(f"{kind} digest of {who} differs: product {json.dumps(a, ensure_ascii=False)[:300]} raw {json.dumps(b, ensure_ascii=False)[:300]}")
                break
    return problems


# --- one run of each variant -----------------------------------------------------------------------


class ProductRun:
    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: list[dict[str, Any]] = []
        self.load: list[tuple[float, float, int]] = []
        self.probe: list[tuple[float, float]] = []
        self.exit_code: int | None = None
        self.timed_out = False
        self.trigger_at = 0.0


def _wait_drained(store: Store, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    con = store.sql(name)
    try:
        while time.monotonic() < deadline:
            if con.rows("SELECT COUNT(*) FROM events WHERE processed = FALSE")[0][0] == 0:
                return
            time.sleep(0.2)
    finally:
        con.close()
    raise BenchError(f"the tracker did not process the synthetic company's last events within {timeout_s:.0f} s")


def run_product(prep: Prepared, plan: CpuPlan, *, name: str, load_rate: float | None, job_timeout_s: float,
                idle_s: float = IDLE_S) -> ProductRun:
    """One product run on a fresh copy: the serving app, the write-lock probe, the load if `load_rate`,
    `idle_s` seconds before the jobs are triggered, until they are done (or `job_timeout_s` passed)."""
    run = ProductRun(name)
    results = prep.tmp / f"{name}-jobs.json"
    for stale in (results, prep.tmp / f"{name}-probe.json", prep.tmp / f"{name}-load.json"):
        stale.unlink(missing_ok=True)  # a kept run's (--reuse): the wait below is for this run's file
    prep.store.copy(PREPARED, name)
    port = harness.free_port()
    config = prep.tmp / f"{name}.toml"
    config.write_text(config_text(port, prep.store.url(name)), encoding="utf-8")
    base = f"http://127.0.0.1:{port}"
    server = Server.start(name, me("_serve", str(config), prep.job_at.isoformat(), str(results)), core=plan.server,
                          ready_url=f"{base}/healthz", log=prep.tmp / f"{name}.log", timeout_s=120)
    load = probe = None
    try:
        _wait_drained(prep.store, name, 60)
        probe_out, load_out = prep.tmp / f"{name}-probe.json", prep.tmp / f"{name}-load.json"
        if isinstance(prep.store, SqliteStore):  # PostgreSQL has no database-wide write lock to probe
            probe = subprocess.Popen(harness.pinned(me("_probe", str(prep.store.path(name)), str(probe_out)), plan.load), cwd=ROOT)
            harness.pin_pid(probe.pid, plan.load)
        if load_rate:
            load = subprocess.Popen(harness.pinned(me("_load", base, str(prep.paths), str(load_rate), str(load_out)), plan.load), cwd=ROOT)
            harness.pin_pid(load.pid, plan.load)
        time.sleep(idle_s + 1.0)  # the first second is the helpers starting
        run.trigger_at = time.monotonic()
        server.proc.send_signal(signal.SIGUSR1)
        deadline = run.trigger_at + job_timeout_s
        while not results.exists():
            if server.proc.poll() is not None:
                raise BenchError(f"the server exited with {server.proc.returncode} during the jobs:\n{harness.tail(server.log)}")
            if time.monotonic() > deadline:
                run.timed_out = True
                break
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        for proc in (load, probe):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (load, probe):
            if proc is not None:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        run.exit_code = server.stop(timeout_s=60)
    if results.exists():
        run.jobs = json.loads(results.read_text(encoding="utf-8"))
    probe_file, load_file = prep.tmp / f"{name}-probe.json", prep.tmp / f"{name}-load.json"
    if probe_file.exists():
        run.probe = [tuple(x) for x in json.loads(probe_file.read_text())]  # type: ignore[misc]
    if load_rate and load_file.exists():
        run.load = [tuple(x) for x in json.loads(load_file.read_text())]  # type: ignore[misc]
    return run


def run_raw(prep: Prepared, plan: CpuPlan) -> list[dict[str, Any]]:
    prep.store.copy(PREPARED, RAW)
    config = prep.tmp / "raw.toml"
    config.write_text(config_text(harness.free_port(), prep.store.url(RAW)), encoding="utf-8")
    out = prep.tmp / "raw-jobs.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(harness.pinned(me("_raw", str(config), prep.job_at.isoformat(), str(out)), plan.server), cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise BenchError(f"the raw SQL run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text(encoding="utf-8"))


# --- report ----------------------------------------------------------------------------------------


def _p99(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _decay_log_ms(job: dict[str, Any]) -> float | None:
    for line in job.get("log", []):
        if "longest write transaction" in line:
            return float(line.rsplit("longest write transaction", 1)[1].split("ms")[0])
    return None


def main(argv: list[str]) -> int:
    if argv and argv[0].startswith("_"):
        return _entry(argv)
    parser = argparse.ArgumentParser(prog="python -m bench nightly", description=SUMMARY)
    parser.add_argument("--contacts", type=int, default=20_000, help="(`make bench` runs 10k: bench/__main__.py ON_SQLITE; 1M for full size)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="link opens per second during the load run (open loop)")
    parser.add_argument("--job-timeout", type=float, default=None,
                        help="seconds the product's four jobs may take in one run (default: 300, or 1 ms per contact if more)")
    parser.add_argument("--idle", type=float, default=IDLE_S, help="seconds of load measured before the jobs start (the p99 baseline)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs) and print its path")
    parser.add_argument("--reuse", type=Path, metavar="DIR",
                        help="SQLite: run on the prepared database a `--keep` run left in DIR instead of synthesizing "
                             "one (its size, not --contacts/--events; DIR is kept, the run's copies are not unless --keep)")
    parser.add_argument("--db", choices=KINDS, default="sqlite", help="the database (the benchmark creates it)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="--db postgresql: the server (its databases are created and dropped)")
    args = parser.parse_args(argv)
    if args.reuse is not None and args.db != "sqlite":
        parser.error("--reuse works with --db sqlite only")
    started = time.monotonic()
    plan = CpuPlan.detect()
    print(f"nightly-jobs benchmark: {SUMMARY}")
    size = f"the prepared database in {args.reuse}" if args.reuse else f"{args.contacts:,} contacts, {args.events:,} events"
    print(f"  {size}; {plan.describe()}; load average before: {harness.machine_load():.2f}")
    tmp = args.reuse or Path(tempfile.mkdtemp(prefix="beacon-bench-nightly-"))
    store = Store.open(args.db, tmp, pg_url=args.pg_url)
    probe = " and the write-lock probe" if args.db == "sqlite" else ""
    try:
        print(f"  database: {store.describe()}")
        if args.reuse is not None:
            prep, facts = reuse_prepared(tmp, store)
            args.contacts, args.events = facts["contacts"], facts["events"]
            print(f"  reusing the prepared database of {prep.now:%Y-%m-%d %H:%M} UTC: {facts['contacts']:,} contacts, {facts['events']:,} events")
        else:
            prep = prepare(tmp, store, contacts=args.contacts, events=args.events, seed=args.seed)
        if args.job_timeout is None:
            args.job_timeout = max(300.0, args.contacts / 1000)
        print(f"  {prep.synth_summary}")
        print(f"  database {prep.size_mb:,.0f} MB; jobs run at {prep.job_at.astimezone(ZoneInfo(TZ)):%Y-%m-%d %H:%M} {TZ} (frozen clock)")
        with harness.timed(f"raw SQL ({'sqlite3' if args.db == 'sqlite' else 'asyncpg'}), same work"):
            raw = run_raw(prep, plan)
        with harness.timed(f"product jobs alone{probe}"):
            idle = run_product(prep, plan, name=IDLE_RUN, load_rate=None, job_timeout_s=args.job_timeout, idle_s=args.idle)
        problems = compare(store, IDLE_RUN, RAW, prep.job_at, prep.last_event) if idle.jobs else []
        if not args.keep:
            for name in (RAW, IDLE_RUN):
                store.drop(name)
        with harness.timed(f"product jobs with {args.rate:g} link opens/s{probe}"):
            loaded = run_product(prep, plan, name=LOAD_RUN, load_rate=args.rate, job_timeout_s=args.job_timeout, idle_s=args.idle)
    except BenchError as exc:
        print(f"\nnightly: could not run: {exc}\n  (files kept in {tmp})", file=sys.stderr)
        if not args.keep:
            store.close()
        return 2
    except BaseException:
        if not args.keep:
            store.close()
        raise
    code = report(args, prep, raw, idle, loaded, problems, started, tmp, plan)
    if args.keep:
        print(f"  files kept in {tmp}" + (f"; databases {store.prefix}_*" if isinstance(store, PostgresStore) else ""))
    elif args.reuse is not None:
        for name in (RAW, IDLE_RUN, LOAD_RUN):  # the prepared database stays for the next --reuse
            store.drop(name)
    else:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return code


def report(args: Any, prep: Prepared, raw: list[dict[str, Any]], idle: ProductRun, loaded: ProductRun, problems: list[str],
           started: float, tmp: Path, plan: CpuPlan) -> int:
    failures: list[str] = list(problems)
    for run in (idle, loaded):
        if run.timed_out:
            failures.append(f"{run.name}: the jobs did not finish within --job-timeout {args.job_timeout:g} s")
        if run.exit_code != 0:
            failures.append(f"{run.name}: the server exited with {run.exit_code}")
        for job in run.jobs:
            if job["error"] or not job["ran"]:
                failures.append(f"{run.name}: {job['job']} failed: {job['error']}")
    raw_by = {j["job"]: j for j in raw}
    idle_by = {j["job"]: j for j in idle.jobs}
    load_by = {j["job"]: j for j in loaded.jobs}
    rows = []
    total_p = total_r = charts = 0.0
    lock_jobs = 0.0
    for job_id in JOBS:
        r, p = raw_by.get(job_id), idle_by.get(job_id)
        if r is None or p is None:
            rows.append([job_id, "-", "-", "-", "-", "-", "-", "-"])
            continue
        total_p += p["seconds"]
        total_r += r["seconds"]
        charts += p["chart_s"]
        alone = _window_max(idle.probe, p)
        lock_jobs = max(lock_jobs, alone or 0.0)
        busy = _window_max(loaded.probe, load_by.get(job_id))
        rows.append([job_id, r["seconds"], p["seconds"], p["seconds"] / r["seconds"] if r["seconds"] else float("inf"),
                     r["longest_tx_ms"], "-" if alone is None else alone, "-" if busy is None else busy, f"{p['chart_s']:.2f}" if p["chart_s"] else "-"])
    ratio_all = total_p / total_r if total_r else float("inf")
    ratio = (total_p - charts) / total_r if total_r else float("inf")
    rows.append(["all four", total_r, total_p, ratio_all, "", "", "", f"{charts:.2f}"])
    rows.append(["all four, chart drawing left out", total_r, total_p - charts, ratio, "", "", "", ""])
    print()
    print("seconds per job (product: the idle run), and the longest wait of the write-lock probe during each job (ms):")
    print(harness.table(
        ["job", "raw s", "product s", "× raw", "raw: longest tx ms", "product: probe, jobs alone", "probe, with link load", "charts s"],
        rows))
    decay_log = _decay_log_ms(idle_by.get("decay-scores", {})) if idle.jobs else None
    # link p99 while the jobs ran vs the idle seconds before
    if loaded.jobs:
        job_start, job_end = loaded.jobs[0]["start"], loaded.jobs[-1]["end"]
    else:
        job_start, job_end = loaded.trigger_at, time.monotonic()
    before = loaded.trigger_at - args.idle

    def lat(lo: float, hi: float) -> list[float]:
        return [latency for due, latency, _status in loaded.load if lo <= due < hi]

    windows = [("idle, before the jobs", before, loaded.trigger_at)]
    windows += [(f"while {j['job']} ran", j["start"], j["end"]) for j in loaded.jobs]
    windows.append(("while the four jobs ran", job_start, job_end))
    idle_p99 = _p99(lat(before, loaded.trigger_at)) * 1000
    link_rows = []
    for label, lo, hi in windows:
        values = lat(lo, hi)
        p99 = _p99(values) * 1000
        link_rows.append([label, len(values), _pct(values, 50), p99, p99 / idle_p99 if idle_p99 else float("inf"),
                          max(_window_values(loaded.probe, lo, hi), default=0.0) if loaded.probe else "-"])
    job_p99 = link_rows[-1][3]
    p99_ratio = link_rows[-1][4]
    errors = sum(1 for _, _, status in loaded.load if not 200 <= status < 300)
    if errors:
        failures.append(f"{errors} link opens answered non-2xx or failed during the load run")
    print()
    print(f"link opens at {args.rate:g}/s (open loop, the contact's own browser) during the load run, and the probe's longest wait:")
    print(harness.table(["window", "requests", "p50 ms", "p99 ms", "× idle p99", "probe max wait ms"], link_rows))
    time_ok = ratio <= TARGET_TIME_RATIO
    probed = bool(idle.probe)  # SQLite only: PostgreSQL has no database-wide write lock
    lock_ok = lock_jobs <= TARGET_LOCK_MS if probed else None
    p99_ok = p99_ratio <= TARGET_P99_RATIO
    print()
    print(f"  time       product {ratio:.2f}× raw SQL for the same work, chart drawing left out ({ratio_all:.2f}× with it) "
          f"(target ≤ {TARGET_TIME_RATIO}×)  {harness.verdict(time_ok)}")
    decay_tx = f"decay's own log: longest write transaction {'-' if decay_log is None else f'{decay_log:.1f}'} ms"
    if probed:
        print(f"  write lock the probe waited at most {lock_jobs:.1f} ms while the jobs ran alone ({decay_tx}) "
              f"(target ≤ {TARGET_LOCK_MS:g} ms)  {harness.verdict(bool(lock_ok))}")
    else:
        print(f"  write lock none on PostgreSQL (row locks only; {decay_tx})")
    print(f"  link p99   {p99_ratio:.2f}× idle while the jobs ran ({job_p99:.0f} ms vs {idle_p99:.0f} ms) "
          f"(target ≤ {TARGET_P99_RATIO:g}×)  {harness.verdict(p99_ok)}")
    for job in idle.jobs:
        for line in job.get("log", []):
            if "decay:" in line or "dormancy:" in line or "digest " in line:
                print(f"  product: {line}")
    for job in raw:
        print(f"  raw:     {job['job']}: {job['detail']}")
    if failures:
        print("\nPROBLEMS:")
        for line in failures:
            print(f"  - {line}")
    else:
        print("  results: the same decay ticks, scores, temperatures, dormancy moves and digest numbers  PASS")
    elapsed = time.monotonic() - started
    print(f"\n  load average after: {harness.machine_load():.2f}; whole benchmark {elapsed:.0f} s")
    path = harness.write_results(NAME if args.db == "sqlite" else f"{NAME}-{args.db}", {
        "benchmark": NAME, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": plan.describe(),
        "settings": {"contacts": args.contacts, "events": args.events, "seed": args.seed, "rate": args.rate, "db": args.db},
        "synth": {"seconds": prep.synth_s, "summary": prep.synth_summary, "size_mb": prep.size_mb},
        "raw": raw, "product_idle": idle.jobs, "product_load": loaded.jobs,
        "time_ratio": ratio, "time_ratio_with_charts": ratio_all, "lock_ms": {"jobs_alone": lock_jobs, "decay_log": decay_log},
        "link": [dict(zip(["window", "requests", "p50_ms", "p99_ms", "ratio", "probe_max_ms"], row)) for row in link_rows],
        "targets": {"time": time_ok, "lock": lock_ok, "p99": p99_ok}, "problems": failures, "elapsed_s": round(elapsed, 1),
    })  # fmt: skip
    print(f"  results: {path.relative_to(ROOT)}")
    if failures:
        return 1
    if args.strict and not (time_ok and lock_ok is not False and p99_ok):
        return 1
    return 0


def _pct(latencies: list[float], p: float) -> float:
    if not latencies:
        return float("nan")
    return statistics.quantiles(latencies, n=100)[int(p) - 1] * 1000 if len(latencies) > 1 else latencies[0] * 1000


def _window_values(probe: list[tuple[float, float]], lo: float, hi: float) -> list[float]:
    """The probe's waits (ms) that began in [lo, hi)."""
    return [w * 1000 for t, w in probe if lo <= t < hi]


def _window_max(probe: list[tuple[float, float]], job: dict[str, Any] | None) -> float | None:
    if job is None or not probe:
        return None
    return max(_window_values(probe, job["start"], job["end"]), default=0.0)


def _entry(argv: list[str]) -> int:
    """The helper processes: `_serve CONFIG JOB_AT RESULTS`, `_probe DB OUT`, `_load URL PATHS RATE OUT`, `_raw CONFIG JOB_AT OUT`."""
    what, rest = argv[0], argv[1:]
    if what == "_serve":
        asyncio.run(_serve(Path(rest[0]), dt.datetime.fromisoformat(rest[1]), Path(rest[2])))
    elif what == "_probe":
        _probe(Path(rest[0]), Path(rest[1]))
    elif what == "_load":
        asyncio.run(_load(rest[0], Path(rest[1]), float(rest[2]), Path(rest[3])))
    elif what == "_raw":
        _raw(Path(rest[0]), dt.datetime.fromisoformat(rest[1]), Path(rest[2]))
    else:
        print(f"unknown helper {what}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
