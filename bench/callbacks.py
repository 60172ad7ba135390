"""The callback benchmark: encrypted WeCom callback POSTs on the real app against a bare aiohttp server.

`python -m bench callbacks [--duration 6] [--rounds 3] [--loadgen auto|wrk|aiohttp] [--nightly]
[--nightly-contacts 100000] [--quiet-share 0.02] [--inbox-workers N] [--db sqlite|postgresql] [--pg-url URL]
[--keep] [--strict]` (`--help` for all)

Setup (once, in a temp dir): a bench config (a SQLite file, or with `--db postgresql` a database on
that server, copied per round from a template: bench/store.py; `--nightly` is SQLite only; `[scheduler] enabled = false`, logging at
WARNING, a WeCom token / EncodingAESKey / corp id, the API pointed at a closed local port so nothing
leaves the machine), `python -m bot migrate`, then the requests: text messages from the two team
members with unique MsgIds, encrypted and signed with the project's WeCom simulator
(bot.wecom.sim_driver.CallbackDriver.envelope: wechatpy's WeChatCrypto, WeCom's envelope) and written
one per line to a file. Every 10th line is a redelivery: an earlier line (up to 300 back) repeated byte
for byte, same MsgId, signature, timestamp and nonce, as WeCom retries. There are enough lines for the
app's rounds not to wrap around (the bare server may wrap: it keeps nothing).

Each round runs both variants, pinned to one core with the load generator on the other:
- bare: bench/bare_callback.py: signature check, timestamp check and decryption with the app's own
  CallbackCrypto (wechatpy underneath), then the app's answer (200, empty body); nothing else;
- beacon: `python -m bot serve` on a fresh copy of the migrated database: the same checks, then parse,
  store in the inbox through the group-commit writer (a redelivery is a no-op), answer; the inbox worker
  processes the rows behind the answer (each text gets its reply queued in the outbox) on the same core,
  giving way to the edge requests in progress (bot/edge.py): the rows still
  pending at SIGTERM (the table's `pending`) are processed at the next start.
wrk runs bench/callbacks.lua: 32 keep-alive connections taking the lines strictly in file order
(without wrk: bench/postgen.py, numbers not comparable); the app's runs end with 3 quiet seconds, not
1, for its slowest answers to come back. After SIGTERM the inbox must hold exactly one row per distinct
MsgId among the callbacks answered 2xx (redeliveries deduplicated, none lost, none extra), and nothing
may be answered non-2xx. `--inbox-workers 0` leaves the stored callbacks pending: what is left is the
edge alone (as links.py's `--tracker off`).

With --nightly, one more beacon run after the rounds, on a copy with 100,000 contacts added
(bench/population.py: owned by the reps; --quiet-share of them with 40-90-day-old scored activity for
the decay job; 10 % customers, half of them past the dormancy window): the nightly jobs decay-scores
then mark-dormant run through bot.scheduler.run_job in a helper process (bench/job_runner.py) pinned to
the server's core (where `serve`'s scheduler would run them), and the load starts once the jobs have
started. Its p99 is the p99 during the jobs (the output says when the jobs ended before the load); its
tail is 12 s, past the 10 s SQLite busy timeout, and more than 1 % of requests still unanswered after
it is a MISS. A job still running when the load ends is stopped (its transaction rolls back). Its
integrity check allows one missing MsgId per request not answered 2xx (WeCom retries those).

Targets (issue 9): throughput >= 0.85x bare on the medians of the rounds, p99 < 100 ms absolute.
Exit status: 0 when it ran and no acknowledged callback was lost (targets may MISS: the table says so;
with --strict a MISS is exit 1 too), 1 when callbacks were lost, duplicated or answered non-2xx, 2 when
it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import BenchError, CpuPlan, LoadResult, Server, bot, run_checked
from bench.job_runner import NIGHTLY
from bench.store import DEFAULT_PG_URL, KINDS, SqliteStore, Store

NAME = "callbacks"
SUMMARY = "encrypted WeCom callback POSTs (10 % redeliveries) vs a bare verify+decrypt aiohttp server"
ROOT = harness.ROOT
SCRIPT = Path(__file__).with_name("callbacks.lua")
TOKEN = "BeaconBenchCallbackToken"
AES_KEY = "QmVhY29uQmVuY2hFbmNvZGluZ0FFU0tleTIwMjZhYmM"  # 43 characters, as WeCom issues them
CORP_ID = "wwbeaconbench00001"
AGENT_ID = 1000002
MEMBERS = ("rep1", "rep2")
# What members type into the app: a command, a question the bot cannot place, small talk.
TEXTS = ("帮助", "help", "今天的白皮书发给王总了吗", "明天上午十点和客户开会", "收到，谢谢", "这个案例很好用")
TARGET_RPS_RATIO = 0.85
TARGET_P99_MS = 100.0
BUDGET_S = 110.0  # the rounds stay under two minutes (the --nightly run comes on top)
QUIET_TAIL_S = 1.0  # the last second of each run sends nothing, so nothing is cut off in flight
APP_TAIL_S = 3.0  # the app's runs wait longer for their last answers (its p99 can pass a second)
NIGHTLY_TAIL_S = 12.0  # > the 10 s SQLite busy timeout: a request stuck behind a job's lock is still answered
REDELIVER_EVERY = 10  # every 10th request repeats an earlier one
REDELIVER_BACK = 300  # ... at most this many lines back
LINES_PER_S = 9000  # lines generated per second of load (the app stays well below this)
NIGHTLY_CONTACTS = 100_000


def config_text(port: int, url: str, *, inbox_workers: int | None = None) -> str:
    # api_base stays closed: replies queued in the outbox never leave the machine
    wecom = {"corp_id": CORP_ID, "agent_id": AGENT_ID, "secret": "bench-secret", "token": TOKEN, "encoding_aes_key": AES_KEY}
    inbox = {} if inbox_workers is None else {"inbox": {"workers": inbox_workers}}
    return harness.beacon_config("Beacon callback benchmark", port=port, db_url=url, wecom=wecom,
                                 members=[(m, f"成员{m[-1]}") for m in MEMBERS], **inbox)


# --- the requests ------------------------------------------------------------------------------------


def _encrypt(messages: list[tuple[int, str, str, str, str]]) -> list[str]:
    """(msg_id, sender, content, timestamp, nonce) -> request lines, as the simulator sends them."""
    from bot.wecom.sim_driver import CallbackDriver, build_xml

    driver = CallbackDriver(
        None,  # type: ignore[arg-type]  # no HTTP here: only its envelope (encrypt + sign)
        "http://127.0.0.1/wecom/callback", token=TOKEN, encoding_aes_key=AES_KEY, corp_id=CORP_ID, agent_id=AGENT_ID,
    )
    lines = []
    for msg_id, sender, content, timestamp, nonce in messages:
        plaintext = build_xml([
            ("ToUserName", CORP_ID), ("FromUserName", sender), ("CreateTime", int(timestamp)), ("MsgType", "text"),
            ("Content", content), ("MsgId", msg_id), ("AgentID", AGENT_ID),
        ])  # fmt: skip
        body, signature = driver.envelope(plaintext, timestamp=timestamp, nonce=nonce)
        lines.append(f"/wecom/callback?msg_signature={signature}&timestamp={timestamp}&nonce={nonce}\t{body}")
    return lines


@dataclass
class Requests:
    """The request file and, per line, the MsgId it carries."""

    path: Path
    msg_ids: list[int]

    def sent(self, n: int) -> list[int]:
        """The MsgIds of the first n requests taken (round-robin over the lines)."""
        total = len(self.msg_ids)
        return self.msg_ids if n >= total else self.msg_ids[:n]

    def distinct_sent(self, n: int) -> set[int]:
        return set(self.sent(n))


def make_requests(path: Path, lines: int, *, seed: int = 9) -> Requests:
    rng = random.Random(seed)
    timestamp = str(int(time.time()))
    first_id = 7_000_000_000_000_000_000 + rng.randrange(10**12) * 1000
    unique = lines - lines // REDELIVER_EVERY
    messages = [
        (first_id + i, MEMBERS[i % len(MEMBERS)], rng.choice(TEXTS), timestamp, str(rng.randrange(10**9, 10**10)))
        for i in range(unique)
    ]
    workers = min(2, os.cpu_count() or 1)
    chunk = (unique + workers - 1) // workers
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_encrypt, [messages[i:i + chunk] for i in range(0, unique, chunk)]))
    encrypted = [line for part in parts for line in part]
    out: list[str] = []
    ids: list[int] = []
    fresh = 0
    for i in range(lines):
        if i % REDELIVER_EVERY == REDELIVER_EVERY - 1:
            back = rng.randint(1, min(i, REDELIVER_BACK))
            out.append(out[i - back])
            ids.append(ids[i - back])
        else:
            out.append(encrypted[fresh])
            ids.append(messages[fresh][0])
            fresh += 1
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return Requests(path, ids)


# --- load ----------------------------------------------------------------------------------------------


def run_post_load(
    base_url: str, requests: Requests, *, plan: CpuPlan, tool: str, duration_s: float, active_s: float, connections: int
) -> tuple[LoadResult, int]:
    """harness.run_load for POSTs of the request file; also returns how many lines were taken."""
    if tool == "wrk":
        argv = [
            harness.WRK or "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "30s",
            "-s", str(SCRIPT), base_url, "--", str(requests.path), str(active_s),
        ]  # fmt: skip
    else:
        argv = [
            sys.executable, "-m", "bench.postgen", "--url", base_url, "--requests", str(requests.path),
            "--active", str(active_s), "--connections", str(connections),
        ]  # fmt: skip
    proc = subprocess.run(harness.pinned(argv, plan.load), cwd=ROOT, capture_output=True, text=True, timeout=duration_s + 60)
    if proc.returncode != 0:
        raise BenchError(f"{tool} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = harness.parse_bench_json(proc.stdout, tool=tool, seconds=active_s)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON "))
    return result, int(json.loads(line[len("BENCH_JSON "):])["sent"])


# --- setup -----------------------------------------------------------------------------------------------


class Prepared:
    def __init__(self, tmp: Path, store: Store) -> None:
        self.tmp = tmp
        self.store = store
        self.db = "prepared"
        self.nightly_db: str | None = None
        self.requests: Requests | None = None
        self.quiet_contacts = 0
        self.contacts = 0


def prepare(tmp: Path, store: Store, *, lines: int, nightly: bool, quiet_share: float, contacts: int = NIGHTLY_CONTACTS) -> Prepared:
    prep = Prepared(tmp, store)
    config = tmp / "setup.toml"
    store.create(prep.db)
    config.write_text(config_text(harness.free_port(), store.url(prep.db)), encoding="utf-8")
    with harness.timed("migrate"):
        run_checked(bot(config, "migrate"), "migrate")
    with harness.timed(f"encrypt {lines:,} callbacks with the WeCom simulator ({lines // REDELIVER_EVERY:,} redeliveries)"):
        prep.requests = make_requests(tmp / "requests.txt", lines)
    if nightly:
        from bench.population import add_contacts

        assert isinstance(store, SqliteStore)  # bench/population.py writes with sqlite3
        prep.nightly_db = "nightly"
        store.copy(prep.db, prep.nightly_db)
        with harness.timed(f"add {contacts:,} contacts for the nightly jobs ({quiet_share:.0%} quiet)"):
            add_contacts(store.path(prep.nightly_db), contacts, owners=MEMBERS, quiet=quiet_share, customers=0.10)
        prep.contacts = contacts
        prep.quiet_contacts = store.query(prep.nightly_db, "SELECT COUNT(*) FROM contacts WHERE last_activity_at IS NOT NULL")[0][0]
    return prep


# --- checks ---------------------------------------------------------------------------------------------


def inbox_rows(store: Store, db: str) -> tuple[list[str], dict[str, int]]:
    keys = [k for (k,) in store.query(db, "SELECT dedupe_key FROM inbox")]
    status = {s: n for s, n in store.query(db, "SELECT status, COUNT(*) FROM inbox GROUP BY status")}
    return keys, status


def integrity(store: Store, db: str, requests: Requests, result: LoadResult, sent: int, rc: int, *, strict_answers: bool) -> dict[str, Any]:
    """Inbox rows vs the callbacks sent and answered. strict_answers: every request must have been
    answered 2xx (the rounds); otherwise one MsgId may be missing per request not answered 2xx."""
    keys, status = inbox_rows(store, db)
    stored = set(keys)
    expected = {f"msg:{m}" for m in requests.distinct_sent(sent)}
    missing, extra = expected - stored, stored - expected
    unanswered = sent - result.ok_2xx  # refused (non-2xx), failed, or still in flight when the load ended
    check: dict[str, Any] = {
        "exit_code": rc,
        "sent": sent,
        "answered_2xx": result.ok_2xx,
        "non_2xx": result.non_2xx,
        "socket_errors": result.socket_errors,
        "distinct_msgids_sent": len(expected),
        "redeliveries_sent": sent - len(expected),
        "inbox_rows": len(keys),
        "duplicate_rows": len(keys) - len(stored),
        "missing": len(missing),
        "extra": len(extra),
        "inbox_status": status,
        "wrapped": sent > len(requests.msg_ids),
    }
    ok = rc == 0 and not extra and len(keys) == len(stored)
    if strict_answers:
        ok = ok and not missing and unanswered == 0 and result.socket_errors == 0
    else:
        ok = ok and len(missing) <= unanswered
    check["ok"] = ok
    return check


# --- the benchmark ----------------------------------------------------------------------------------------


@dataclass
class CallbacksBench:
    prep: Prepared
    plan: CpuPlan
    tool: str
    duration_s: int
    connections: int
    inbox_workers: int | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    nightly: dict[str, Any] | None = None

    @property
    def active_s(self) -> float:
        return self.duration_s - QUIET_TAIL_S

    def load(self, base: str, *, tail_s: float = QUIET_TAIL_S) -> tuple[LoadResult, int]:
        assert self.prep.requests is not None
        return run_post_load(
            base, self.prep.requests, plan=self.plan, tool=self.tool, duration_s=self.active_s + tail_s,
            active_s=self.active_s, connections=self.connections,
        )

    def run_bare(self, n: int) -> LoadResult:
        port = harness.free_port()
        base = f"http://127.0.0.1:{port}"
        argv = [
            sys.executable, "-m", "bench.bare_callback", "--port", str(port), "--token", TOKEN, "--aes-key", AES_KEY,
            "--corp-id", CORP_ID,
        ]  # fmt: skip
        with Server.start("bare", argv, core=self.plan.server, ready_url=f"{base}/ready", log=self.prep.tmp / f"bare-{n}.log") as server:
            cpu0 = harness.cpu_seconds(server.proc.pid)
            result, _sent = self.load(base)
            result.server_cpu_s = harness.cpu_seconds(server.proc.pid) - cpu0
        harness.print_round(n, "bare", result, name_width=7)
        return result

    def _start_beacon(self, db: str, label: str) -> tuple[Server, str]:
        port = harness.free_port()
        base = f"http://127.0.0.1:{port}"
        config = self.prep.tmp / f"{label}.toml"
        config.write_text(config_text(port, self.prep.store.url(db), inbox_workers=self.inbox_workers), encoding="utf-8")
        log = self.prep.tmp / f"{label}.log"
        server = Server.start("beacon", bot(config, "serve"), core=self.plan.server, ready_url=f"{base}/healthz", log=log)
        return server, base

    def run_beacon(self, n: int) -> LoadResult:
        assert self.prep.requests is not None
        db = f"run-{n}"
        self.prep.store.copy(self.prep.db, db)
        server, base = self._start_beacon(db, f"beacon-{n}")
        try:
            cpu0 = harness.cpu_seconds(server.proc.pid)
            result, sent = self.load(base, tail_s=APP_TAIL_S)
            result.server_cpu_s = harness.cpu_seconds(server.proc.pid) - cpu0
        finally:
            rc = server.stop()
        check = integrity(self.prep.store, db, self.prep.requests, result, sent, rc, strict_answers=True)
        check.update(round=n, stop_s=round(server.stop_seconds or 0, 2))
        self.checks.append(check)
        harness.print_round(n, "beacon", result, name_width=7)
        return result

    def run_nightly(self) -> LoadResult:
        """The same load while the nightly jobs run against 100k contacts."""
        assert self.prep.requests is not None and self.prep.nightly_db is not None
        db = "run-nightly"
        self.prep.store.copy(self.prep.nightly_db, db)
        server, base = self._start_beacon(db, "beacon-nightly")
        jobs_out: list[dict[str, Any]] = []
        runner: subprocess.Popen[str] | None = None
        jobs_log = open(self.prep.tmp / "jobs.log", "ab")
        try:
            # on the server's core: `serve`'s scheduler would run the jobs in the server's own process
            argv = [sys.executable, "-m", "bench.job_runner", str(self.prep.tmp / "beacon-nightly.toml")]
            runner = subprocess.Popen(harness.pinned(argv, self.plan.server), cwd=ROOT, stdout=subprocess.PIPE, stderr=jobs_log, text=True)
            harness.pin_pid(runner.pid, self.plan.server)
            assert runner.stdout is not None
            first = runner.stdout.readline()  # JOBS_STARTED (or nothing, if it failed)
            if not first.startswith("JOBS_STARTED"):
                raise BenchError(f"the job runner did not start: {first!r}\n{harness.tail(self.prep.tmp / 'jobs.log')}")
            jobs_started = time.time()
            cpu0 = harness.cpu_seconds(server.proc.pid)
            result, sent = self.load(base, tail_s=NIGHTLY_TAIL_S)
            result.server_cpu_s = harness.cpu_seconds(server.proc.pid) - cpu0
            load_ended = time.time()
            still_running = runner.poll() is None
            if still_running:
                runner.terminate()
            out, _ = runner.communicate(timeout=30)
            jobs_out = [json.loads(x[len("JOB_JSON "):]) for x in out.splitlines() if x.startswith("JOB_JSON ")]
        finally:
            try:
                if runner is not None and runner.poll() is None:
                    runner.kill()
                    runner.wait()
                jobs_log.close()
            finally:
                rc = server.stop()
        check = integrity(self.prep.store, db, self.prep.requests, result, sent, rc, strict_answers=False)
        check.update(round="nightly", stop_s=round(server.stop_seconds or 0, 2))
        self.nightly = {
            "result": result,
            "check": check,
            "jobs": jobs_out,
            "jobs_stopped": still_running,
            "jobs_running_s": round(load_ended - jobs_started, 1),
            "load_window_s": round(self.active_s, 1),
        }
        harness.print_round(0, "nightly", result, name_width=7)
        return result



def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench callbacks", description=SUMMARY)
    parser.add_argument("--duration", type=int, default=6, help="seconds per load run (the last one is a quiet tail)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--nightly", action="store_true", help="one more run while the nightly jobs work on 100k contacts")
    parser.add_argument("--nightly-contacts", type=int, default=NIGHTLY_CONTACTS, help="--nightly: contacts in its database")
    parser.add_argument(
        "--quiet-share", type=float, default=0.02,
        help="--nightly: share of the contacts with old scored activity (what decay-scores works on)",
    )
    parser.add_argument(
        "--inbox-workers", type=int, default=None,
        help="[inbox] workers for the app (default: the app's default); 0: callbacks are stored, never processed: the edge alone",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs) and print its path")
    parser.add_argument("--db", choices=KINDS, default="sqlite", help="the app's database (bench/store.py)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="--db postgresql: the server (its databases are created and dropped)")
    args = parser.parse_args(argv)
    if args.duration < 2:
        parser.error("--duration must be at least 2 seconds")
    if args.nightly and args.db != "sqlite":
        parser.error("--nightly runs on SQLite only (its population is written with sqlite3)")
    if not 0 <= args.quiet_share <= 0.9:
        parser.error("--quiet-share must be between 0 and 0.9")

    started = time.monotonic()
    plan = CpuPlan.detect()
    try:
        tool = harness.load_tool(args.loadgen)
    except BenchError as exc:
        print(f"callbacks: {exc}", file=sys.stderr)
        return 2
    print(f"callback benchmark: {SUMMARY}")
    print(
        f"  text messages from {len(MEMBERS)} members, every {REDELIVER_EVERY}th a redelivery, {args.connections} connections, "
        f"{args.duration - QUIET_TAIL_S:g} s of load per run, {args.rounds} rounds A/B"
        + (", then one run during the nightly jobs" if args.nightly else "")
        + ("" if args.inbox_workers is None else f", app's inbox workers: {args.inbox_workers}")
    )
    print(f"  {plan.describe()}; load generator: {tool}; load average before: {harness.machine_load():.2f}")
    if tool != "wrk":
        print("  NOTE: wrk is not installed; the aiohttp load generator saturates first, so these numbers")
        print("        and ratios are not comparable with wrk runs.")
    tmp = Path(tempfile.mkdtemp(prefix="beacon-bench-callbacks-"))
    lines = max(5000, int((args.duration - QUIET_TAIL_S) * LINES_PER_S))
    store = Store.open(args.db, tmp, pg_url=args.pg_url)
    try:
        print(f"  database: {store.describe()}")
        prep = prepare(tmp, store, lines=lines, nightly=args.nightly, quiet_share=args.quiet_share, contacts=args.nightly_contacts)
        bench = CallbacksBench(prep, plan, tool, args.duration, args.connections, args.inbox_workers)
        rounds = harness.alternate(
            {"bare": bench.run_bare, "beacon": bench.run_beacon}, rounds=args.rounds, deadline=started + BUDGET_S - 25
        )
        if args.nightly:
            bench.run_nightly()
    except (BenchError, OSError) as exc:
        print(f"\ncallbacks: could not run: {exc}\n  (files kept in {tmp})", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            store.close()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return report(rounds, bench, args, tool, plan, started, tmp)


def report(rounds: dict[str, list[LoadResult]], bench: CallbacksBench, args: Any, tool: str, plan: CpuPlan, started: float, tmp: Path) -> int:
    bare, beacon = harness.median_of(rounds["bare"]), harness.median_of(rounds["beacon"])
    rps_ratio = beacon["rps"] / bare["rps"] if bare["rps"] else 0.0
    rows = [
        ["bare aiohttp (verify + decrypt)", bare["rps"], bare["p50_ms"], bare["p99_ms"], bare["cpu_us_per_request"], 1.0],
        [f"beacon (python -m bot serve, {args.db})", beacon["rps"], beacon["p50_ms"], beacon["p99_ms"], beacon["cpu_us_per_request"], rps_ratio],
    ]
    night = bench.nightly
    if night is not None:
        r: LoadResult = night["result"]
        cpu = r.cpu_us_per_request
        none = float("nan")
        rows.append([
            "beacon during nightly jobs", r.rps, r.p50_ms if r.requests else none, r.p99_ms if r.requests else none,
            none if cpu is None else cpu,
            r.rps / bare["rps"] if bare["rps"] else 0.0,
        ])  # fmt: skip
    print()
    print(f"median of {len(rounds['beacon'])} round(s):")
    print(harness.table(["variant", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "× bare (req/s)"], rows))
    rps_ok, p99_ok = rps_ratio >= TARGET_RPS_RATIO, beacon["p99_ms"] < TARGET_P99_MS
    print()
    print(f"  throughput {rps_ratio:.2f}× bare (target ≥ {TARGET_RPS_RATIO}×)  {harness.verdict(rps_ok)}")
    print(f"  p99        {beacon['p99_ms']:.1f} ms (target < {TARGET_P99_MS:.0f} ms)  {harness.verdict(p99_ok)}")
    night_ok = True
    if night is not None:
        r = night["result"]
        waiting = night["check"]["sent"] - r.requests
        if waiting > 0.01 * night["check"]["sent"]:
            # more than 1 % never answered within the load and its tail: the p99 is past the whole run
            night_ok = False
            seen = f"> {night['jobs_running_s']:.0f} s ({waiting:,} of {night['check']['sent']:,} requests still unanswered)"
        else:
            night_ok = r.p99_ms < TARGET_P99_MS
            seen = f"{r.p99_ms:.1f} ms"
        print(f"  p99 during the nightly jobs {seen} (target < {TARGET_P99_MS:.0f} ms)  {harness.verdict(night_ok)}")
        for job in night["jobs"]:
            print(f"    {job['job']}: {job['seconds']:.1f} s{'' if not job['error'] else ', error: ' + job['error']}")
        done = {job["job"] for job in night["jobs"]}
        for name in (n for n in NIGHTLY if n not in done):
            print(f"    {name}: still running when the load ended ({night['jobs_running_s']:.0f} s after the jobs started): stopped, rolled back")
        jobs_s = sum(job["seconds"] for job in night["jobs"])
        if done >= set(NIGHTLY) and jobs_s < night["load_window_s"]:
            print(f"    NOTE: the jobs took {jobs_s:.1f} s of the {night['load_window_s']:g} s of load: the p99 also covers time without them")
        print(
            f"    ({bench.prep.contacts:,} contacts, {bench.prep.quiet_contacts:,} with old activity for the decay job; "
            f"{waiting:,} request(s) not answered when the load ended)"
        )
    print()
    print("after SIGTERM, per beacon run: inbox rows vs distinct MsgIds answered 2xx:")
    checks = bench.checks + ([night["check"]] if night is not None else [])
    print(
        harness.table(
            ["round", "sent", "2xx", "non-2xx", "socket err", "redelivered", "distinct", "inbox rows", "missing", "extra",
             "pending", "exit", "stop s", "verdict"],
            [
                [
                    str(c["round"] + 1 if isinstance(c["round"], int) else c["round"]), c["sent"], c["answered_2xx"], c["non_2xx"],
                    c["socket_errors"], c["redeliveries_sent"], c["distinct_msgids_sent"], c["inbox_rows"], c["missing"],
                    c["extra"], c["inbox_status"].get("pending", 0), c["exit_code"], c["stop_s"], "PASS" if c["ok"] else "FAIL",
                ]
                for c in checks
            ],
        )
    )  # fmt: skip
    if any(c["wrapped"] for c in bench.checks):
        print("  NOTE: a beacon round used more requests than were generated; the lines wrapped around (more redeliveries)")
    intact = bool(checks) and all(c["ok"] for c in checks)
    print(f"  one inbox row per distinct acknowledged MsgId, none lost, no extra, no non-2xx: {'PASS' if intact else 'FAIL'}")
    elapsed = time.monotonic() - started
    print(f"\n  load average after: {harness.machine_load():.2f}; whole benchmark {elapsed:.0f} s")
    if args.keep:
        print(f"  files kept in {tmp}")
    path = harness.write_results(
        (NAME if args.db == "sqlite" else f"{NAME}-{args.db}") + ("-edge" if args.inbox_workers == 0 else ""),
        {
            "benchmark": NAME,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tool": tool,
            "cpu": plan.describe(),
            "settings": {
                k: getattr(args, k)
                for k in ("duration", "rounds", "connections", "nightly", "nightly_contacts", "quiet_share", "inbox_workers", "db")
            },
            "rounds": {name: [r.as_dict() for r in results] for name, results in rounds.items()},
            "median": {"bare": bare, "beacon": beacon},
            "ratio": {"rps": rps_ratio},
            "targets": {"rps_ratio_min": TARGET_RPS_RATIO, "p99_ms_max": TARGET_P99_MS, "rps": rps_ok, "p99": p99_ok},
            "nightly": None if night is None else {
                "load": night["result"].as_dict(), "jobs": night["jobs"], "jobs_stopped": night["jobs_stopped"],
                "quiet_contacts": bench.prep.quiet_contacts, "p99_ok": night_ok,
            },
            "integrity": checks,
            "elapsed_s": round(elapsed, 1),
        },
    )
    print(f"  results: {path.relative_to(ROOT)}")
    if not intact:
        return 1
    if args.strict and not (rps_ok and p99_ok and night_ok):
        return 1
    return 0
