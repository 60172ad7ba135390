"""The event-latency benchmark: how long after a link open is answered the tracker has processed it.

`python -m bench latency [--duration 6] [--rounds 3] [--contacts 100000] [--rate 0] [--loadgen auto|wrk|aiohttp]
[--db sqlite|postgresql] [--pg-url URL] [--keep] [--strict]` (`--help` for all)

Processing an event means: attributed to its contact, scored, and its alert decided (the tracker's
hooks, scoring then alerts then SOP, run in the transaction that sets `events.processed`; see
bot/tracker.py and bot/runtime.py). The schema keeps no processed-at time, so the benchmark watches
from outside: a thread of the benchmark (pinned to the load generator's core) polls the running app's
database every 5 ms (the SQLite file read-only with sqlite3; PostgreSQL with asyncpg) for the highest event id (what has been committed, which is what the
app waits for before it answers) and the lowest unprocessed id (the tracker works in id order, so
every event below it is processed). Per `open` event: latency = first poll that saw it processed -
first poll that saw it stored, to within one polling interval (the table also gives the time from the
app's own `received_at`, taken when the request came in, to processed).

Setup: bench/links.py's (migrate, the sample library, 1,000 shares each to its own contact, the landing
page for the bare server), then the database grows to --contacts contacts (bench/population.py:
sqlite3 executemany, or COPY on PostgreSQL; owned by the two reps, spread over the stages), and every share's contact gets an
owner, so that opens raise follow-up alerts.

Each round runs both variants under bench/links.py's load (wrk + bench/links.lua: 32 connections, a
new visitor per request, Zipf-popular tokens), pinned to one core with the load generator on the other:
- bare: bench/bare_server.py with the same landing page (the links baseline);
- beacon: `python -m bot serve` on a fresh copy of the prepared database, warmed up as in links.py,
  measured as above (its runs end with 3 quiet seconds, not 1, for its slowest answers to come back);
  after the load it gets up to 15 s to finish processing the backlog. While opens come as fast as it
  answers, the app's tracker gives way to them (bot/edge.py): most of a saturated run's events are
  processed after its load, and their latency is that of the backlog's drain.
Then one paced run of the app (wrk only, bench/latency.lua): opens at a fixed rate (--rate, default
half the rate the whole pipeline sustained in the saturated runs: the opens stored over the time until
the tracker had processed them all), the latency of a steady load the tracker can keep up with.
After SIGTERM every run must have stored one `open` per 2xx answer, with nothing answered non-2xx.

Targets (issue 9): event->processed p99 <= the bare handler's request p99; throughput >= 0.75x bare,
on the medians of the rounds. Exit status: 0 when it ran and no answered open was lost (targets may
MISS; --strict makes a MISS exit 1), 1 when opens were lost or errors answered, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import harness, links
from bench.harness import BenchError, CpuPlan, LoadResult, Server
from bench.store import DEFAULT_PG_URL, KINDS, PostgresStore, SqliteStore, Store

NAME = "latency"
SUMMARY = "event -> scored -> alert decided latency under link-open load, 100k contacts, vs links' bare server"
ROOT = harness.ROOT
PACED_SCRIPT = Path(__file__).with_name("latency.lua")
TARGET_RPS_RATIO = 0.75
BUDGET_S = 110.0
QUIET_TAIL_S = links.QUIET_TAIL_S
APP_TAIL_S = 3  # the app's runs wait longer for their last answers (its p99 can pass a second)
POLL_S = 0.005
DRAIN_TIMEOUT_S = 15.0


# --- watching the tracker ------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Polls the app's database: (time.time(), highest event id, lowest unprocessed id or None).

    `db` is the SQLite file (read-only, sqlite3) or a PostgreSQL DSN (asyncpg, on this thread's own loop)."""

    def __init__(self, db: Path | str, core: int | None, interval_s: float = POLL_S) -> None:
        super().__init__(name="latency-watcher", daemon=True)
        self.db = db
        self.core = core
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int | None]] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            if self.core is not None:
                os.sched_setaffinity(0, {self.core})  # this thread only: beside the load generator
            if isinstance(self.db, Path):
                self._poll_sqlite(self.db)
            else:
                asyncio.run(self._poll_postgres(self.db))
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _poll_sqlite(self, path: Path) -> None:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            while not self._halt.is_set():
                top = conn.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
                # `processed = 0` matches the partial index ix_events_unprocessed: one index probe
                low = conn.execute("SELECT MIN(id) FROM events WHERE processed = 0").fetchone()[0]
                self.samples.append((time.time(), top, low))
                self._halt.wait(self.interval_s)
        finally:
            conn.close()

    async def _poll_postgres(self, dsn: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            while not self._halt.is_set():
                top = await conn.fetchval("SELECT MAX(id) FROM events") or 0
                low = await conn.fetchval("SELECT MIN(id) FROM events WHERE processed = false")
                self.samples.append((time.time(), top, low))
                await asyncio.sleep(self.interval_s)
        finally:
            await conn.close()

    def caught_up(self) -> bool:
        return bool(self.samples) and self.samples[-1][2] is None

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:  # started
            self.join(timeout=5)


def _utc(stored: str | dt.datetime) -> float:
    """A stored `received_at` (naive UTC: text on SQLite, a datetime from asyncpg) as a timestamp."""
    at = stored if isinstance(stored, dt.datetime) else dt.datetime.fromisoformat(stored)
    return at.replace(tzinfo=dt.timezone.utc).timestamp()


def latencies(samples: list[tuple[float, int, int | None]], opens: list[tuple[int, str]]) -> dict[str, Any]:
    """Per open event: (first sample that saw it processed) - (first sample that saw it stored), and
    - its received_at. Events never seen processed are counted, not measured."""
    times = [s[0] for s in samples]
    tops = [s[1] for s in samples]
    marks = [s[2] if s[2] is not None else s[1] + 1 for s in samples]  # every id below the mark is processed
    for i in range(1, len(marks)):  # both are monotonic in truth; keep them so against read skew
        tops[i] = max(tops[i], tops[i - 1])
        marks[i] = max(marks[i], marks[i - 1])
    after_store: list[float] = []
    after_receipt: list[float] = []
    unseen = unprocessed = 0
    for event_id, received_at in opens:
        s = bisect.bisect_left(tops, event_id)
        p = bisect.bisect_right(marks, event_id)
        if s >= len(samples):
            unseen += 1
            continue
        if p >= len(samples):
            unprocessed += 1
            continue
        after_store.append(max(0.0, times[p] - times[s]))
        after_receipt.append(times[p] - _utc(received_at))
    return {
        "measured": len(after_store),
        "not_processed": unprocessed,
        "not_seen": unseen,
        "after_store_ms": _percentiles(after_store),
        "after_receipt_ms": _percentiles(after_receipt),
        "polls": len(samples),
        "poll_interval_ms": round((times[-1] - times[0]) / max(1, len(times) - 1) * 1000, 2) if len(times) > 1 else None,
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    values = sorted(values)

    def pct(p: float) -> float:
        return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": values[-1] * 1000}


# --- setup --------------------------------------------------------------------------------------------


def prepare(tmp: Path, store: Store, *, shares: int, contacts: int) -> links.Prepared:
    from bench.population import add_contacts, add_contacts_postgres

    prep = links.prepare(tmp, store, shares=shares)
    have = store.query(prep.db, "SELECT COUNT(*) FROM contacts")[0][0]
    # the shares' contacts get an owner: their opens raise follow-up alerts for that rep
    store.execute(prep.db, "UPDATE contacts SET owner_userid = CASE id % 2 WHEN 0 THEN 'rep1' ELSE 'rep2' END WHERE owner_userid IS NULL")
    if contacts > have:
        with harness.timed(f"add {contacts - have:,} contacts ({contacts:,} in all)"):
            if isinstance(store, SqliteStore):
                add_contacts(store.path(prep.db), contacts - have, owners=("rep1", "rep2"))
            else:
                assert isinstance(store, PostgresStore)
                add_contacts_postgres(store.dsn(prep.db), contacts - have, owners=("rep1", "rep2"))
    return prep


# --- the benchmark --------------------------------------------------------------------------------------


@dataclass
class LatencyBench:
    prep: links.Prepared
    plan: CpuPlan
    tool: str
    duration_s: int
    zipf: float
    connections: int
    links_bench: links.LinksBench = field(init=False)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.links_bench = links.LinksBench(
            self.prep, plan=self.plan, tool=self.tool, duration_s=self.duration_s, zipf=self.zipf, connections=self.connections
        )

    @property
    def active_s(self) -> float:
        return self.duration_s - QUIET_TAIL_S

    def run_bare(self, n: int) -> LoadResult:
        return self.links_bench.run_bare(n)

    def run_beacon(self, n: int) -> LoadResult:
        return self._run_app(n, rate=None)

    def sustained_rate(self) -> float:
        """Opens per second the whole pipeline kept up with in the saturated runs (median): the opens
        stored, over the time until the tracker had processed them all (the load, then the drain)."""
        rates = [r["opens_stored"] / (self.active_s + r["drain_s"]) for r in self.runs if r["rate"] is None and r["opens_stored"]]
        return statistics.median(rates) if rates else 0.0

    def run_paced(self, rate: float) -> LoadResult:
        return self._run_app(len(self.runs), rate=rate)

    def _app_load(self, base: str, rate: float | None) -> LoadResult:
        """links.py's load (paced by bench/latency.lua at `rate`), with a longer quiet tail."""
        args = [str(self.prep.paths_file), str(self.active_s), str(self.zipf)]
        return harness.run_load(
            base, plan=self.plan, tool=self.tool, wrk_script=links.SCRIPT if rate is None else PACED_SCRIPT,
            script_args=args if rate is None else [*args, f"{rate:.1f}"], duration_s=int(self.active_s + APP_TAIL_S),
            active_s=self.active_s, connections=self.connections,
            loadgen_args=["--paths", str(self.prep.paths_file), "--zipf", str(self.zipf)],
        )  # fmt: skip

    def _run_app(self, n: int, *, rate: float | None) -> LoadResult:
        label = f"paced-{n}" if rate else f"run-{n}"
        store = self.prep.store
        store.copy(self.prep.db, label)
        start_id = store.query(label, "SELECT COALESCE(MAX(id), 0) FROM events")[0][0]
        alerts_before = store.query(label, "SELECT COUNT(*) FROM alerts")[0][0]
        port = harness.free_port()
        base = f"http://127.0.0.1:{port}"
        config = self.prep.tmp / f"{label}.toml"
        config.write_text(links.config_text(port, store.url(label)), encoding="utf-8")
        log = self.prep.tmp / f"beacon-{label}.log"
        server = Server.start("beacon", harness.bot(config, "serve"), core=self.plan.server, ready_url=f"{base}/healthz", log=log)
        watcher = Watcher(store.path(label) if isinstance(store, SqliteStore) else store.dsn(label), self.plan.load)  # type: ignore[union-attr]
        drain_s = 0.0
        try:
            warm_bad = asyncio.run(links._warm_up(base, self.prep.paths))
            watcher.start()
            cpu0 = harness.cpu_seconds(server.proc.pid)
            result = self._app_load(base, rate)
            result.server_cpu_s = harness.cpu_seconds(server.proc.pid) - cpu0
            drain_started = time.monotonic()
            while not watcher.caught_up() and time.monotonic() - drain_started < DRAIN_TIMEOUT_S and watcher.is_alive():
                time.sleep(0.05)
            drain_s = time.monotonic() - drain_started
        finally:
            try:
                watcher.stop()
            finally:
                rc = server.stop()
        if watcher.error is not None:
            raise BenchError(f"watching the database failed: {watcher.error!r}")
        start = int(start_id)
        opens = store.query(label, f"SELECT id, received_at FROM events WHERE type = 'open' AND id > {start} ORDER BY id")
        alerts = store.query(label, "SELECT COUNT(*) FROM alerts")[0][0] - alerts_before
        unprocessed = store.query(label, "SELECT COUNT(*) FROM events WHERE processed = false")[0][0]
        events_by_type = dict(store.query(label, f"SELECT type, COUNT(*) FROM events WHERE id > {start} GROUP BY type"))
        lat = latencies(watcher.samples, opens)
        run = {
            "label": label,
            "rate": rate,
            "result": result,
            "latency": lat,
            "opens_stored": len(opens),
            "opens_answered_2xx": result.ok_2xx,
            "non_2xx": warm_bad + result.non_2xx,
            "socket_errors": result.socket_errors,
            "exit_code": rc,
            "stop_s": round(server.stop_seconds or 0, 2),
            "drain_s": round(drain_s, 2),
            "alerts_raised": alerts,
            "unprocessed_after_stop": unprocessed,
            "events_by_type": events_by_type,
        }
        run["ok"] = rc == 0 and len(opens) == result.ok_2xx and run["non_2xx"] == 0 and result.socket_errors == 0
        self.runs.append(run)
        a = lat["after_store_ms"]
        print(
            f"  round {n + 1} {('paced' if rate else 'beacon'):<6} {result.rps:>9,.0f} req/s  request p99 {result.p99_ms:7.2f} ms  "
            f"event→processed p50 {a['p50']:7.1f} ms  p99 {a['p99']:8.1f} ms  ({lat['measured']:,} opens, "
            f"{lat['not_processed']:,} not processed within {DRAIN_TIMEOUT_S:.0f} s, {alerts:,} alerts raised)",
            flush=True,
        )
        return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench latency", description=SUMMARY)
    parser.add_argument("--duration", type=int, default=6, help="seconds per load run (the last one is a quiet tail)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--shares", type=int, default=1000)
    parser.add_argument("--contacts", type=int, default=100_000, help="contacts in the database (at least the shares')")
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent s (rank r has weight 1/r^s)")
    parser.add_argument("--rate", type=float, default=0.0, help="opens/s of the paced run; 0: half the rate the whole pipeline sustained (see the docstring); -1: no paced run")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs) and print its path")
    parser.add_argument("--db", choices=KINDS, default="sqlite", help="the app's database (the benchmark creates it)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="--db postgresql: the server (its databases are created and dropped)")
    args = parser.parse_args(argv)
    if args.duration < 2:
        parser.error("--duration must be at least 2 seconds")

    started = time.monotonic()
    plan = CpuPlan.detect()
    try:
        tool = harness.load_tool(args.loadgen)
    except BenchError as exc:
        print(f"latency: {exc}", file=sys.stderr)
        return 2
    print(f"latency benchmark: {SUMMARY}")
    print(
        f"  {args.contacts:,} contacts, {args.shares:,} shares, links.py's load ({args.connections} connections, a new visitor per "
        f"request), {args.duration - QUIET_TAIL_S:g} s of load per run, {args.rounds} rounds A/B, polling every {POLL_S * 1000:g} ms"
    )
    print(f"  {plan.describe()}; load generator: {tool}; load average before: {harness.machine_load():.2f}")
    if tool != "wrk":
        print("  NOTE: wrk is not installed; the aiohttp load generator saturates first, so these numbers")
        print("        and ratios are not comparable with wrk runs; no paced run.")
    tmp = Path(tempfile.mkdtemp(prefix="beacon-bench-latency-"))
    store = Store.open(args.db, tmp, pg_url=args.pg_url)
    try:
        print(f"  database: {store.describe()}")
        prep = prepare(tmp, store, shares=args.shares, contacts=args.contacts)
        bench = LatencyBench(prep, plan, tool, args.duration, args.zipf, args.connections)
        rounds = harness.alternate(
            {"bare": bench.run_bare, "beacon": bench.run_beacon}, rounds=args.rounds, deadline=started + BUDGET_S - 35
        )
        paced_rate = None
        if tool == "wrk" and args.rate >= 0:
            paced_rate = args.rate or round(bench.sustained_rate() / 2, 1)
            if paced_rate > 0:
                bench.run_paced(paced_rate)
    except (BenchError, OSError) as exc:
        print(f"\nlatency: could not run: {exc}\n  (files kept in {tmp})", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            store.close()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return report(rounds, bench, args, tool, plan, started, tmp)


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # without NaN
    return statistics.median(values) if values else float("nan")


def report(rounds: dict[str, list[LoadResult]], bench: LatencyBench, args: Any, tool: str, plan: CpuPlan, started: float, tmp: Path) -> int:
    bare, beacon = harness.median_of(rounds["bare"]), harness.median_of(rounds["beacon"])
    rps_ratio = beacon["rps"] / bare["rps"] if bare["rps"] else 0.0
    saturated = [r for r in bench.runs if not r["rate"]]
    paced = [r for r in bench.runs if r["rate"]]

    def lat(runs: list[dict[str, Any]], which: str, p: str) -> float:
        return _median([r["latency"][which][p] for r in runs])

    lat_p50, lat_p99 = lat(saturated, "after_store_ms", "p50"), lat(saturated, "after_store_ms", "p99")
    not_processed = sum(r["latency"]["not_processed"] for r in saturated)
    print()
    print(f"median of {len(rounds['beacon'])} round(s):")
    rows: list[list[Any]] = [
        ["bare aiohttp (links baseline)", bare["rps"], bare["p50_ms"], bare["p99_ms"], float("nan"), float("nan"), float("nan"), 1.0],
        [
            "beacon, as fast as it answers", beacon["rps"], beacon["p50_ms"], beacon["p99_ms"], lat_p50, lat_p99,
            lat(saturated, "after_receipt_ms", "p99"), rps_ratio,
        ],
    ]  # fmt: skip
    for r in paced:
        res: LoadResult = r["result"]
        rows.append([
            f"beacon, paced at {r['rate']:,.0f}/s", res.rps, res.p50_ms, res.p99_ms, r["latency"]["after_store_ms"]["p50"],
            r["latency"]["after_store_ms"]["p99"], r["latency"]["after_receipt_ms"]["p99"], res.rps / bare["rps"] if bare["rps"] else 0.0,
        ])  # fmt: skip
    print(
        harness.table(
            ["variant", "req/s", "request p50 ms", "request p99 ms", "event p50 ms", "event p99 ms", "p99 from receipt", "× bare (req/s)"],
            rows,
        )
    )
    print("  event: answered (stored) → processed: attributed, scored, alert decided; to within one poll "
          f"(~{POLL_S * 1000:g} ms); from receipt: from the app's received_at")  # fmt: skip
    rps_ok = rps_ratio >= TARGET_RPS_RATIO
    lat_ok = lat_p99 == lat_p99 and lat_p99 <= bare["p99_ms"] and not_processed == 0
    print()
    print(f"  throughput        {rps_ratio:.2f}× bare (target ≥ {TARGET_RPS_RATIO}×)  {harness.verdict(rps_ok)}")
    print(
        f"  event p99         {lat_p99:.1f} ms vs the bare handler's request p99 {bare['p99_ms']:.1f} ms (target ≤)  {harness.verdict(lat_ok)}"
        + (f"  ({not_processed:,} opens not processed within {DRAIN_TIMEOUT_S:.0f} s after the load)" if not_processed else "")
    )
    for r in paced:
        p99 = r["latency"]["after_store_ms"]["p99"]
        verdict = harness.verdict(p99 <= bare["p99_ms"])
        print(f"  paced event p99   {p99:.1f} ms at {r['result'].rps:,.0f} opens/s (same target: {verdict}, not counted)")
    print()
    print("after SIGTERM, per beacon run: `open` rows stored vs opens answered 2xx, and the tracker's work:")
    print(
        harness.table(
            ["run", "stored", "answered 2xx", "non-2xx", "socket err", "exit", "stop s", "drain s", "alerts", "forwards", "unprocessed",
             "verdict"],
            [
                [
                    r["label"], r["opens_stored"], r["opens_answered_2xx"], r["non_2xx"], r["socket_errors"], r["exit_code"], r["stop_s"],
                    r["drain_s"], r["alerts_raised"], r["events_by_type"].get("forward", 0), r["unprocessed_after_stop"],
                    "PASS" if r["ok"] else "FAIL",
                ]
                for r in bench.runs
            ],
        )
    )  # fmt: skip
    intact = bool(bench.runs) and all(r["ok"] for r in bench.runs)
    print(f"  events stored == opens answered with 2xx, no non-2xx: {'PASS' if intact else 'FAIL'}")
    elapsed = time.monotonic() - started
    print(f"\n  load average after: {harness.machine_load():.2f}; whole benchmark {elapsed:.0f} s")
    if args.keep:
        print(f"  files kept in {tmp}")
    path = harness.write_results(
        NAME if args.db == "sqlite" else f"{NAME}-{args.db}",
        {
            "benchmark": NAME,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tool": tool,
            "cpu": plan.describe(),
            "settings": {k: getattr(args, k) for k in ("duration", "rounds", "connections", "shares", "contacts", "zipf", "rate")},
            "rounds": {name: [r.as_dict() for r in results] for name, results in rounds.items()},
            "median": {"bare": bare, "beacon": beacon, "event_p50_ms": lat_p50, "event_p99_ms": lat_p99},
            "ratio": {"rps": rps_ratio},
            "targets": {"rps_ratio_min": TARGET_RPS_RATIO, "event_p99_max_ms": bare["p99_ms"], "rps": rps_ok, "event_p99": lat_ok},
            "runs": [{**r, "result": r["result"].as_dict()} for r in bench.runs],
            "elapsed_s": round(elapsed, 1),
        },
    )
    print(f"  results: {path.relative_to(ROOT)}")
    if not intact:
        return 1
    if args.strict and not (rps_ok and lat_ok):
        return 1
    return 0
