"""The link-open benchmark: GET /l/{token} on the real app against a bare aiohttp server.

`python -m bench links [--duration 6] [--rounds 3] [--loadgen auto|wrk|aiohttp] [--tracker on|off]
[--py-spy PATH] [--db sqlite|postgresql] [--pg-url URL] [--keep] [--strict]` (`--help` for all)

Setup (once, in a temp dir): a bench config (a SQLite file, or with `--db postgresql` a database on
that server, copied per round from a template: bench/store.py; `[scheduler] enabled = false`, logging at
WARNING), `python -m bot migrate`, `python -m bot content import content/library`, then 1,000 shares:
the rows POST /api/shares makes (contact, its identity, share), inserted directly in the database,
each to its own contact, spread over the sample library's public, non-gated items and two reps; and
one landing page fetched from the app as the baseline's response.

Each round runs both variants, pinned to one core with the load generator on the other:
- bare: bench/bare_server.py, serving that landing page's bytes for every token;
- beacon: `python -m bot serve` on a fresh copy of the prepared database.
The app is first warmed up (a HEAD of each token fills its link and page caches as in steady state and
records nothing; the bare server has nothing to warm), then wrk runs bench/links.lua: 32 keep-alive
connections, Zipf-popular tokens, a phone user agent, a new visitor cookie and a new client address
(X-Forwarded-For; loopback is a trusted proxy) per request, so every answered request is a first open
that must be stored and no per-address limit sees one client. After SIGTERM the beacon's events table must
hold exactly one `open` per 2xx answered, and nothing may be answered non-2xx (warm-up included).
The app's tracker runs on the same core; while the opens outpace it, it gives way to them (bot/edge.py),
and the events it had not reached at SIGTERM are the table's `unprocessed` (processed at the next start).

Targets (PERFORMANCE.md): throughput >= 0.8x bare, p99 <= 2.5x bare, on the medians of the rounds.
Exit status: 0 when it ran and no answered open was lost (targets may MISS: the table says so; with
--strict a MISS is exit 1 too), 1 when opens were lost or errors answered, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import harness
from bench.harness import BenchError, CpuPlan, LoadResult, Server, bot, run_checked
from bench.loadgen import random_ip
from bench.store import DEFAULT_PG_URL, KINDS, Store

NAME = "links"
SUMMARY = "GET /l/{token} landing page with event recording vs a bare aiohttp server"
ROOT = harness.ROOT
SCRIPT = Path(__file__).with_name("links.lua")
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.47 NetType/WIFI Language/zh_CN"
)
COOKIE_CHARS = string.ascii_letters + string.digits + "-_"
TARGET_RPS_RATIO = 0.8
TARGET_P99_RATIO = 2.5
BUDGET_S = 110.0  # the whole benchmark stays under two minutes
QUIET_TAIL_S = 1.0  # the last second of each wrk run sends nothing, so nothing is cut off in flight
# Headers of the real page that the bare server repeats (the rest are per response or per connection).
DROP_HEADERS = {"date", "server", "content-length", "set-cookie", "transfer-encoding", "connection", "keep-alive"}
# Where a py-spy profile of the subject is broken down (substrings of frame names).
PROFILE_MARKS = [
    "handle_landing", "is_preview_fetch", "ShareResolver._load", "Pages.render", "Signer.sign", "EventLog.link_event",
    "TokenBuckets.allow", "web_protocol", "BatchWriter", "Connection._execute", "_write_to_self", "_connection_worker_thread",
    "Tracker._process", "hold_lease", "InboxWorker", "OutboxWorker", "EpollSelector.select",
]  # fmt: skip


def config_text(port: int, url: str) -> str:
    return harness.beacon_config("Beacon link-open benchmark", port=port, db_url=url,
                                 members=[("rep1", "张三"), ("rep2", "李四")])


def visitor_cookie(rng: random.Random) -> str:
    return "".join(rng.choice(COOKIE_CHARS) for _ in range(24))





def count_events(store: Store, db: str) -> dict[str, int]:
    rows = store.query(db, "SELECT type, COUNT(*) FROM events GROUP BY type")
    unprocessed = store.query(db, "SELECT COUNT(*) FROM events WHERE processed = false")[0][0]
    counts = {t: n for t, n in rows}
    counts["(unprocessed)"] = unprocessed
    return counts


class Prepared:
    """The setup every round starts from."""

    def __init__(self, tmp: Path, store: Store) -> None:
        self.tmp = tmp
        self.store = store
        self.db = "prepared"
        self.paths_file = tmp / "paths.txt"
        self.page = tmp / "page.html"
        self.headers = tmp / "headers.json"
        self.paths: list[str] = []


async def _create_shares(config: Path, n: int, slugs: list[str]) -> list[str]:
    """n shares, each to its own contact: the rows POST /api/shares would make (contact, its
    external_userid identity, share), inserted in bulk. Through the API they take ~30 ms each here."""
    from sqlalchemy import insert, select

    from bot.clock import SystemClock
    from bot.config import load_settings
    from bot.db import create_engine, session_factory
    from bot.models import Contact, ContentItem, Identity, Share
    from bot.shares import new_token
    from bot.team import upsert_members

    settings = load_settings(config)
    engine = create_engine(settings.database)
    now = SystemClock().now()
    externals = [f"wmBench{i:04d}" for i in range(n)]
    tokens = [new_token() for _ in range(n)]
    try:
        async with session_factory(engine)() as session, session.begin():
            await upsert_members(session, settings.team.members)
            items = {i.slug: i for i in (await session.scalars(select(ContentItem).where(ContentItem.slug.in_(slugs)))).all()}
            await session.execute(insert(Contact), [{"external_userid": e, "created_at": now, "updated_at": now} for e in externals])
            ids = dict((await session.execute(select(Contact.external_userid, Contact.id).where(Contact.external_userid.in_(externals)))).all())
            await session.execute(
                insert(Identity),
                [{"contact_id": ids[e], "kind": "external_userid", "value": e, "created_at": now} for e in externals],
            )
            rows = []
            for i, (external, token) in enumerate(zip(externals, tokens, strict=True)):
                item = items[slugs[i % len(slugs)]]
                rows.append({
                    "token": token, "item_id": item.id, "version_id": item.current_version_id, "rep_userid": f"rep{1 + i % 2}",
                    "contact_id": ids[external], "source": "api", "created_at": now,
                })  # fmt: skip
            await session.execute(insert(Share), rows)
    finally:
        await engine.dispose()
    return tokens


def _free_leases(store: Store, db: str) -> None:
    # A stopped process keeps its leases until they expire (30 s for the tracker); the subject must
    # run with its tracker working behind the hot path as in steady state, so it starts with none.
    store.execute(db, "DELETE FROM leases")


def _lease_tracker_elsewhere(store: Store, db: str) -> None:
    # --tracker off: the tracker lease belongs to "another process", so the app's tracker only polls
    # for the lease and attributes nothing: what is left is the hot path alone.
    store.execute(db, "INSERT INTO leases (name, owner, locked_until) VALUES ('tracker', 'bench-elsewhere', '2099-01-01 00:00:00.000000')")


async def _fetch_page(url: str) -> tuple[bytes, dict[str, str]]:
    cookie = visitor_cookie(random.Random())
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(url, headers={"User-Agent": PHONE_UA, "Cookie": f"bcn_v={cookie}"}) as resp:
            if resp.status != 200:
                raise BenchError(f"GET {url} answered {resp.status}")
            body = await resp.read()
            headers = {k: v for k, v in resp.headers.items() if k.lower() not in DROP_HEADERS}
    return body, headers


def prepare(tmp: Path, store: Store, *, shares: int) -> Prepared:
    """Migrate, import the sample library, create the shares, keep one rendered page."""
    prep = Prepared(tmp, store)
    port = harness.free_port()
    config = tmp / "setup.toml"
    store.create(prep.db)
    config.write_text(config_text(port, store.url(prep.db)), encoding="utf-8")
    with harness.timed("migrate"):
        run_checked(bot(config, "migrate"), "migrate")
    with harness.timed("import the sample library"):
        run_checked(bot(config, "content", "import", str(ROOT / "content" / "library")), "content import")
    slugs = [
        row[0]
        for row in store.query(
            prep.db,
            "SELECT slug FROM content_items WHERE internal = false AND gated = false AND retired_at IS NULL "
            "AND current_version_id IS NOT NULL ORDER BY slug",
        )
    ]
    if not slugs:
        raise BenchError("the sample library has no public, non-gated items")
    with harness.timed(f"create {shares:,} shares (each to its own contact)"):
        tokens = asyncio.run(_create_shares(config, shares, slugs))
    # Popularity must not follow the order of creation (and so of items): shuffle the ranks.
    random.Random(7).shuffle(tokens)
    prep.paths = [f"/l/{t}" for t in tokens]
    base = f"http://127.0.0.1:{port}"
    with harness.timed("fetch the most popular landing page for the baseline"):
        server = Server.start("setup", bot(config, "serve"), core=None, ready_url=f"{base}/healthz", log=tmp / "setup.log")
        try:
            body, headers = asyncio.run(_fetch_page(base + prep.paths[0]))
        finally:
            rc = server.stop()
        if rc != 0:
            raise BenchError(f"the setup server exited with {rc}:\n{harness.tail(server.log)}")
    _free_leases(store, prep.db)
    prep.paths_file.write_text("\n".join(prep.paths) + "\n", encoding="utf-8")
    prep.page.write_bytes(body)
    prep.headers.write_text(json.dumps(headers), encoding="utf-8")
    return prep


async def _warm_up(base: str, paths: list[str]) -> int:
    """Every path once with HEAD, 32 at a time: fills the app's link and page caches as in steady state.
    HEAD is a preview fetch, so nothing is recorded. Returns how many answered other than 200."""
    sem = asyncio.Semaphore(32)
    rng = random.Random()
    bad = 0
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": PHONE_UA}) as http:

        async def one(path: str) -> None:
            nonlocal bad
            async with sem, http.head(base + path, headers={"X-Forwarded-For": random_ip(rng)}) as resp:
                bad += resp.status != 200

        await asyncio.gather(*(one(p) for p in paths))
    return bad


class LinksBench:
    def __init__(
        self, prep: Prepared, *, plan: CpuPlan, tool: str, duration_s: int, zipf: float, connections: int,
        py_spy: str | None = None, tracker: bool = True,
    ) -> None:
        self.prep = prep
        self.plan = plan
        self.tool = tool
        self.duration_s = duration_s
        self.active_s = duration_s - QUIET_TAIL_S
        self.zipf = zipf
        self.connections = connections
        self.py_spy = py_spy
        self.tracker = tracker
        self.profile: str | None = None
        self.checks: list[dict[str, Any]] = []

    def load(self, base: str) -> LoadResult:
        return harness.run_load(
            base,
            plan=self.plan,
            tool=self.tool,
            wrk_script=SCRIPT,
            script_args=[str(self.prep.paths_file), str(self.active_s), str(self.zipf)],
            duration_s=self.duration_s,
            active_s=self.active_s,
            connections=self.connections,
            loadgen_args=["--paths", str(self.prep.paths_file), "--zipf", str(self.zipf)],
        )

    def run_bare(self, n: int) -> LoadResult:
        port = harness.free_port()
        base = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "bench.bare_server", "--port", str(port), "--page", str(self.prep.page), "--headers", str(self.prep.headers)]
        with Server.start("bare", argv, core=self.plan.server, ready_url=f"{base}/l/ready", log=self.prep.tmp / f"bare-{n}.log") as server:
            cpu0 = harness.cpu_seconds(server.proc.pid)  # nothing to warm up in a bare server
            result = self.load(base)
            result.server_cpu_s = harness.cpu_seconds(server.proc.pid) - cpu0
        harness.print_round(n, "bare", result, name_width=6)
        return result

    def run_beacon(self, n: int) -> LoadResult:
        store, db = self.prep.store, f"run-{n}"
        store.copy(self.prep.db, db)
        if not self.tracker:
            _lease_tracker_elsewhere(store, db)
        before = count_events(store, db).get("open", 0)
        port = harness.free_port()
        base = f"http://127.0.0.1:{port}"
        config = self.prep.tmp / f"run-{n}.toml"
        config.write_text(config_text(port, store.url(db)), encoding="utf-8")
        log = self.prep.tmp / f"beacon-{n}.log"
        server = Server.start("beacon", bot(config, "serve"), core=self.plan.server, ready_url=f"{base}/healthz", log=log)
        try:
            warm_started = time.monotonic()
            warm_bad = asyncio.run(_warm_up(base, self.prep.paths))
            warm_s = time.monotonic() - warm_started
            spy = None
            if self.py_spy and self.profile is None:  # the first round only
                stacks = self.prep.tmp / "beacon.stacks"
                spy = harness.start_py_spy(self.py_spy, server.proc.pid, seconds=self.active_s, out=stacks)
            cpu0 = harness.cpu_seconds(server.proc.pid)
            result = self.load(base)
            result.server_cpu_s = harness.cpu_seconds(server.proc.pid) - cpu0
            per_pass = asyncio.run(_events_per_tracker_pass(base))
            if spy is not None:
                _, err = spy.communicate(timeout=30)
                self.profile = (
                    harness.summarize_stacks(stacks, marks=PROFILE_MARKS)
                    if stacks.exists()
                    else f"  py-spy failed: {err.decode(errors='replace')[-500:]}"
                )
        finally:
            rc = server.stop()
        counts = count_events(store, db)
        stored = counts.get("open", 0) - before
        answered = result.ok_2xx
        check = {
            "round": n,
            "exit_code": rc,
            "warm_up_s": round(warm_s, 2),
            "stop_s": round(server.stop_seconds or 0, 2),
            "opens_stored": stored,
            "opens_answered_2xx": answered,
            "non_2xx": warm_bad + result.non_2xx,
            "socket_errors": result.socket_errors,
            "events_by_type": counts,
            "events_per_tracker_pass": per_pass,
            "log_lines": len(log.read_text(errors="replace").splitlines()),
        }
        check["ok"] = rc == 0 and stored == answered and check["non_2xx"] == 0 and result.socket_errors == 0
        self.checks.append(check)
        harness.print_round(n, "beacon", result, name_width=6)
        return result



async def _events_per_tracker_pass(base: str) -> float | None:
    """From the app's /metrics after the load: events the tracker handled per pass (its batch size)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    values = dict(re.findall(r"^(beacon_tracker_(?:events|batches)_total) ([0-9.e+]+)$", text, re.M))
    events, batches = float(values.get("beacon_tracker_events_total", 0)), float(values.get("beacon_tracker_batches_total", 0))
    return round(events / batches, 1) if batches else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench links", description=SUMMARY)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run (the last one is a quiet tail)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--shares", type=int, default=1000)
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent s (rank r has weight 1/r^s)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs) and print its path")
    parser.add_argument(
        "--tracker", choices=["on", "off"], default="on",
        help="off: the app's tracker never gets its lease (attribution and scoring idle): the hot path alone",
    )
    parser.add_argument("--py-spy", metavar="PATH", help="profile the app during its first round with this py-spy binary")
    parser.add_argument("--db", choices=KINDS, default="sqlite", help="the app's database (bench/store.py)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="--db postgresql: the server (its databases are created and dropped)")
    args = parser.parse_args(argv)
    if args.duration < 2:
        parser.error("--duration must be at least 2 seconds")

    started = time.monotonic()
    plan = CpuPlan.detect()
    try:
        tool = harness.load_tool(args.loadgen)
    except BenchError as exc:
        print(f"links: {exc}", file=sys.stderr)
        return 2
    print(f"link-open benchmark: {SUMMARY}")
    print(
        f"  {args.shares:,} shares, Zipf s={args.zipf}, a new visitor per request, {args.connections} connections, "
        f"{args.duration - QUIET_TAIL_S:g} s of load per run, {args.rounds} rounds A/B, app's tracker {args.tracker}"
    )
    print(f"  {plan.describe()}; load generator: {tool}; load average before: {harness.machine_load():.2f}")
    if tool != "wrk":
        print("  NOTE: wrk is not installed; the aiohttp load generator saturates first, so these numbers")
        print("        and ratios are not comparable with wrk runs or with PERFORMANCE.md.")
    tmp = Path(tempfile.mkdtemp(prefix="beacon-bench-links-"))
    store = Store.open(args.db, tmp, pg_url=args.pg_url)
    try:
        print(f"  database: {store.describe()}")
        prep = prepare(tmp, store, shares=args.shares)
        bench = LinksBench(
            prep, plan=plan, tool=tool, duration_s=args.duration, zipf=args.zipf, connections=args.connections, py_spy=args.py_spy,
            tracker=args.tracker == "on",
        )
        rounds = harness.alternate(
            {"bare": bench.run_bare, "beacon": bench.run_beacon}, rounds=args.rounds, deadline=started + BUDGET_S - 25
        )
    except (BenchError, OSError) as exc:
        print(f"\nlinks: could not run: {exc}\n  (files kept in {tmp})", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            store.close()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return report(rounds, bench, args, tool, plan, started, tmp)


def report(rounds: dict[str, list[LoadResult]], bench: LinksBench, args: Any, tool: str, plan: CpuPlan, started: float, tmp: Path) -> int:
    bare, beacon = harness.median_of(rounds["bare"]), harness.median_of(rounds["beacon"])
    rps_ratio = beacon["rps"] / bare["rps"] if bare["rps"] else 0.0
    p99_ratio = beacon["p99_ms"] / bare["p99_ms"] if bare["p99_ms"] else float("inf")
    print()
    print(f"median of {len(rounds['beacon'])} round(s):")
    print(
        harness.table(
            ["variant", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "× bare (req/s)", "× bare (p99)"],
            [
                ["bare aiohttp (same bytes)", bare["rps"], bare["p50_ms"], bare["p99_ms"], bare["cpu_us_per_request"], 1.0, 1.0],
                [
                    f"beacon (python -m bot serve, {args.db})", beacon["rps"], beacon["p50_ms"], beacon["p99_ms"],
                    beacon["cpu_us_per_request"], rps_ratio, p99_ratio,
                ],
            ],
        )
    )
    rps_ok, p99_ok = rps_ratio >= TARGET_RPS_RATIO, p99_ratio <= TARGET_P99_RATIO
    print()
    print(f"  throughput {rps_ratio:.2f}× bare (target ≥ {TARGET_RPS_RATIO}×)  {harness.verdict(rps_ok)}")
    print(f"  p99        {p99_ratio:.2f}× bare (target ≤ {TARGET_P99_RATIO}×)  {harness.verdict(p99_ok)}")
    print()
    print("after SIGTERM, per beacon round: `open` rows stored vs opens answered 2xx:")
    print(
        harness.table(
            ["round", "stored", "answered 2xx", "non-2xx", "socket err", "exit", "stop s", "unprocessed", "forward",
             "events/tracker pass", "verdict"],
            [
                [
                    c["round"] + 1, c["opens_stored"], c["opens_answered_2xx"], c["non_2xx"], c["socket_errors"],
                    c["exit_code"], c["stop_s"], c["events_by_type"].get("(unprocessed)", 0),
                    c["events_by_type"].get("forward", 0), c["events_per_tracker_pass"], "PASS" if c["ok"] else "FAIL",
                ]
                for c in bench.checks
            ],
        )
    )
    intact = all(c["ok"] for c in bench.checks) and bool(bench.checks)
    print(f"  events stored == opens answered with 2xx, no non-2xx: {'PASS' if intact else 'FAIL'}")
    if bench.profile:
        print("\nprofile of the app in round 1 (py-spy):")
        print(bench.profile)
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
            "settings": {k: getattr(args, k) for k in ("duration", "rounds", "connections", "shares", "zipf", "tracker", "db")},
            "rounds": {name: [r.as_dict() for r in results] for name, results in rounds.items()},
            "median": {"bare": bare, "beacon": beacon},
            "ratio": {"rps": rps_ratio, "p99": p99_ratio},
            "targets": {"rps_ratio_min": TARGET_RPS_RATIO, "p99_ratio_max": TARGET_P99_RATIO, "rps": rps_ok, "p99": p99_ok},
            "integrity": bench.checks,
            "profile": bench.profile,
            "elapsed_s": round(elapsed, 1),
        },
    )
    print(f"  results: {path.relative_to(ROOT)}")
    if not intact:
        return 1
    if args.strict and not (rps_ok and p99_ok):
        return 1
    return 0
